// One training example → token ids and a loss mask, for each data format.
//
// An Example is { ids, lossMask }: lossMask[i] = 1 when token i is a target, i.e. the model is
// trained to predict ids[i] from ids[0..i-1]. lossMask[0] is always 0 (nothing predicts the first
// token), which batches.ts relies on when it packs examples into one row.
//
// BOS and EOS: text formats are tokenized as the server tokenizes a completion prompt
// (TextTokenizer.encode with special tokens: BOS when the tokenizer adds it), and EOS is appended
// and trained, so an adapter learns where its answers end. Chat examples are rendered by the model's
// chat template, which writes its own BOS and end-of-turn text (as the server renders chat).
//
// Boundaries are found on token ids, never by tokenizing pieces separately: a SentencePiece-style
// tokenizer prepends "▁" to every text it encodes, so "prompt" and "completion" tokenized apart
// differ from the two tokenized together. We tokenize the whole and each prefix, and take the
// prefix's length in tokens as the longest common prefix of the two id lists; a token that merges
// across the boundary thus counts as a target (it carries target text).
import { TextTokenizer } from '../runtime/tokenizer.ts';
import { ChatTemplate } from '../runtime/chat-template.ts';
import type { ChatMessage } from '../runtime/chat-template.ts';

export interface Example {
  ids: number[];
  lossMask: number[]; // 1: ids[i] is a target (predicted from ids[i-1]); lossMask[0] is 0
}

export class ExampleEncoder {
  private readonly eosId: number | null;

  constructor(private readonly tokenizer: TextTokenizer, private readonly template: ChatTemplate) {
    this.eosId = tokenizer.eosToken !== null ? tokenizer.tokenId(tokenizer.eosToken) ?? null : null;
  }

  // From a model directory's tokenizer.json and tokenizer_config.json (loadModelFiles).
  static forModel(files: { tokenizerJson: Record<string, unknown>; tokenizerConfig: Record<string, unknown> }): ExampleEncoder {
    const tokenizer = new TextTokenizer(files.tokenizerJson, files.tokenizerConfig);
    return new ExampleEncoder(tokenizer, new ChatTemplate(tokenizer.chatTemplate, { bos_token: tokenizer.bosToken, eos_token: tokenizer.eosToken }));
  }

  // {"text"} and .txt paragraphs: every token after the first is a target.
  text(text: string): Example {
    const ids = this.withEos(this.tokenizer.encode(text, true));
    return { ids, lossMask: ids.map((_, i) => (i === 0 ? 0 : 1)) };
  }

  // {"prompt", "completion"}: the completion's tokens (and EOS) are the targets.
  promptCompletion(prompt: string, completion: string): Example {
    const ids = this.withEos(this.tokenizer.encode(prompt + completion, true));
    const start = Math.max(1, commonPrefix(ids, this.tokenizer.encode(prompt, true)));
    return { ids, lossMask: ids.map((_, i) => (i >= start ? 1 : 0)) };
  }

  // {"messages"}: the assistant turns are the targets, each from where its content starts to the end
  // of its rendered turn (end-of-turn text included, so the adapter learns to stop).
  //
  // Method: for assistant message k, render messages[0..k) with the generation prompt (where the
  // model starts writing) and messages[0..k] without it (where the turn ends). Assumption: the
  // template renders a conversation's prefix as a prefix of the whole conversation's text, which
  // holds for templates that loop over the messages (HF's and ours). When the generation-prompt
  // rendering is not such a prefix, the turn starts where messages[0..k) ends. A template that
  // breaks the assumption (one that rewrites earlier turns, e.g. dropping past reasoning) is
  // refused, since no span can be found.
  chat(messages: ChatMessage[]): Example {
    const full = this.template.render(messages, false);
    const ids = this.tokenizer.encode(full, false);
    const lossMask = ids.map(() => 0);
    const tokensIn = (text: string): number => commonPrefix(ids, this.tokenizer.encode(text, false));
    for (let k = 0; k < messages.length; k++) {
      if (messages[k].role !== 'assistant') continue;
      const before = k > 0 ? this.template.render(messages.slice(0, k), false) : '';
      const prompted = this.template.render(messages.slice(0, k), true);
      const through = this.template.render(messages.slice(0, k + 1), false);
      if (!full.startsWith(through) || !full.startsWith(before)) {
        throw new Error(`the chat template does not render messages[0..${k}] as a prefix of the whole conversation, so assistant turn ${k} cannot be located`);
      }
      const startText = full.startsWith(prompted) && prompted.length <= through.length ? prompted : before;
      const start = Math.max(1, startText === '' ? 0 : tokensIn(startText));
      const end = tokensIn(through);
      for (let i = start; i < end; i++) lossMask[i] = 1;
    }
    return { ids, lossMask };
  }

  private withEos(ids: number[]): number[] {
    return this.eosId === null ? ids : [...ids, this.eosId];
  }
}

// How many leading ids two lists share.
function commonPrefix(a: number[], b: number[]): number {
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  return i;
}
