// Chat messages → prompt text, with the model's own chat_template (tokenizer_config.json) rendered
// by @huggingface/jinja, a maintained Jinja implementation made for HF chat templates.
import { Template } from '@huggingface/jinja';
import { invalidField, LoraserveError } from '../runtime/errors.ts';

export interface ChatMessage {
  role: string;
  content: string;
}

export class ChatTemplate {
  private readonly template: Template | null;

  constructor(source: string | null, private readonly special: { bos_token: string | null; eos_token: string | null }) {
    this.template = source ? new Template(source) : null;
  }

  render(messages: ChatMessage[], addGenerationPrompt = true): string {
    if (!this.template) throw new LoraserveError('invalid_request', 'this model has no chat_template in tokenizer_config.json; use /v1/completions', { param: 'messages' });
    try {
      return this.template.render({ messages, add_generation_prompt: addGenerationPrompt, bos_token: this.special.bos_token ?? '', eos_token: this.special.eos_token ?? '' });
    } catch (e) {
      throw invalidField('messages', `the chat template could not render these messages: ${(e as Error).message}`);
    }
  }
}

// OpenAI message content: a string or an array of {type: "text", text} parts.
export function parseMessages(v: unknown): ChatMessage[] {
  if (!Array.isArray(v) || v.length === 0) throw invalidField('messages', `'messages' must be a non-empty array`);
  return v.map((m, i) => {
    if (typeof m !== 'object' || m === null) throw invalidField(`messages[${i}]`, `'messages[${i}]' must be an object`);
    const { role, content } = m as { role?: unknown; content?: unknown };
    if (typeof role !== 'string' || !['system', 'developer', 'user', 'assistant', 'tool'].includes(role)) {
      throw invalidField(`messages[${i}].role`, `'messages[${i}].role' must be one of system, developer, user, assistant, tool`);
    }
    let text: string;
    if (typeof content === 'string') text = content;
    else if (content == null && role === 'assistant') text = '';
    else if (Array.isArray(content) && content.every((p) => p && typeof p === 'object' && (p as { type?: unknown }).type === 'text' && typeof (p as { text?: unknown }).text === 'string')) {
      text = content.map((p) => (p as { text: string }).text).join('');
    } else throw invalidField(`messages[${i}].content`, `'messages[${i}].content' must be a string or an array of text parts`);
    return { role, content: text };
  });
}
