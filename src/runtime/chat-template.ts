// Chat messages → prompt text, with the model's own chat_template (tokenizer_config.json) rendered
// by @huggingface/jinja, a maintained Jinja implementation made for HF chat templates. It lives in
// runtime because the template is model knowledge: the server renders requests with it and the
// trainer renders its chat examples with it.
import { Template } from '@huggingface/jinja';
import { invalidField, LoraserveError } from './errors.ts';

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
