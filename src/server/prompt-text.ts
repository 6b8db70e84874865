// Prompt text → token ids: tokenizing, detokenizing token-id prompts, and rendering chat
// templates. Runs in the prompt worker (prompt-worker.ts), never on the HTTP thread: HF-style BPE
// in JavaScript costs ~8 s per MB of text here, and a chat template is arbitrary code.
//
// Byte bound: a token stands for at most `maxTokenBytes` bytes of input (its longest decoded
// text, special tokens included), so a text of more than context × maxTokenBytes bytes cannot fit
// in the context, and is refused by its length before any tokenizing. A Unicode-composing
// normalizer (NFC/NFKC) can shrink text up to 3× before tokenizing (three Hangul jamo → one
// syllable), so it triples the bound.
import { TextTokenizer } from '../runtime/tokenizer.ts';
import { ChatTemplate } from '../runtime/chat-template.ts';
import type { ChatMessage } from '../runtime/chat-template.ts';
import { invalidField } from '../runtime/errors.ts';

export interface PromptTextOptions {
  tokenizerJson: Record<string, unknown>;
  tokenizerConfig: Record<string, unknown>;
  maxContext: number;
}

export class PromptText {
  readonly tokenizer: TextTokenizer;
  private readonly template: ChatTemplate;
  readonly maxPromptBytes: number;

  constructor(opts: PromptTextOptions) {
    this.tokenizer = new TextTokenizer(opts.tokenizerJson, opts.tokenizerConfig);
    this.template = new ChatTemplate(this.tokenizer.chatTemplate, { bos_token: this.tokenizer.bosToken, eos_token: this.tokenizer.eosToken });
    this.maxPromptBytes = opts.maxContext * maxTokenBytes(this.tokenizer) * (composes(opts.tokenizerJson.normalizer) ? 3 : 1);
  }

  encode(texts: string[], addSpecialTokens: boolean, param = 'prompt'): number[][] {
    return texts.map((t, i) => {
      checkPromptBytes(t, this.maxPromptBytes, texts.length > 1 ? `${param}[${i}]` : param);
      return this.tokenizer.encode(t, addSpecialTokens);
    });
  }

  decode(prompts: number[][]): string[] {
    return prompts.map((ids) => this.tokenizer.decode(ids, false));
  }

  // The model's chat template, then the tokens (the template adds BOS itself).
  renderChat(messages: ChatMessage[], addGenerationPrompt: boolean): { text: string; ids: number[] } {
    const text = this.template.render(messages, addGenerationPrompt);
    checkPromptBytes(text, this.maxPromptBytes, 'messages');
    return { text, ids: this.tokenizer.encode(text, false) };
  }
}

// Refuses a text that cannot fit in the context, by its byte length alone.
export function checkPromptBytes(text: string, maxBytes: number, param: string): void {
  if (text.length > maxBytes || Buffer.byteLength(text, 'utf8') > maxBytes) {
    throw invalidField(param, `'${param}' is ${Buffer.byteLength(text, 'utf8')} bytes; no text over ${maxBytes} bytes fits in the context (context length × the longest token's bytes)`);
  }
}

// The most input bytes one token can stand for.
export function maxTokenBytes(tok: TextTokenizer): number {
  let max = 4; // an unknown character (<unk>, or byte fallback) covers up to 4 bytes
  for (let id = 0; id < tok.vocabSize; id++) max = Math.max(max, Buffer.byteLength(tok.tokenText(id), 'utf8'));
  return max;
}

function composes(normalizer: unknown): boolean {
  return /"type":"NFK?C"/.test(JSON.stringify(normalizer ?? null));
}
