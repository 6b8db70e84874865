// OpenAI chat request messages → ChatMessage[] (the rendering is runtime/chat-template.ts).
import { invalidField } from '../runtime/errors.ts';
import type { ChatMessage } from '../runtime/chat-template.ts';

// OpenAI message content: a string or an array of {type: "text", text} parts, joined by newlines
// as vLLM joins them (_parse_chat_message_content_parts).
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
      text = content.map((p) => (p as { text: string }).text).join('\n'); // vLLM: "\n".join(texts)
    } else throw invalidField(`messages[${i}].content`, `'messages[${i}].content' must be a string or an array of text parts`);
    return { role, content: text };
  });
}
