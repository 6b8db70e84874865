// Text ↔ token ids through @huggingface/tokenizers (a maintained port of HF tokenizers),
// plus an incremental decoder for streaming.
import { Tokenizer } from '@huggingface/tokenizers';

export class TextTokenizer {
  private readonly tok: Tokenizer;
  readonly bosToken: string | null;
  readonly eosToken: string | null;
  readonly chatTemplate: string | null;
  readonly addBosToken: boolean | null;   // tokenizer_config.json's add_bos_token, when it says
  private readonly bosId: number | null;
  private readonly specialIds: Set<number>;
  private readonly pieceText = new Map<number, string>();
  private readonly pieceBytes = new Map<number, number[]>();
  private readonly byteFallback: boolean; // SentencePiece-style <0xNN> pieces are single bytes
  private readonly byteLevel: boolean;    // GPT-2-style pieces spell bytes as characters

  constructor(tokenizerJson: Record<string, unknown>, tokenizerConfig: Record<string, unknown>) {
    this.tok = new Tokenizer(tokenizerJson, tokenizerConfig);
    const model = tokenizerJson.model as { byte_fallback?: unknown } | undefined;
    this.byteFallback = model?.byte_fallback === true;
    this.byteLevel = JSON.stringify(tokenizerJson.decoder ?? null).includes('"ByteLevel"');
    this.bosToken = tokenString(tokenizerConfig.bos_token);
    this.eosToken = tokenString(tokenizerConfig.eos_token);
    this.chatTemplate = typeof tokenizerConfig.chat_template === 'string' ? tokenizerConfig.chat_template : null;
    this.addBosToken = typeof tokenizerConfig.add_bos_token === 'boolean' ? tokenizerConfig.add_bos_token : null;
    this.bosId = this.bosToken !== null ? this.tok.token_to_id(this.bosToken) ?? null : null;
    this.specialIds = new Set([...this.tok.get_added_tokens_decoder().entries()].filter(([, t]) => t.special).map(([id]) => id));
  }

  // add_special_tokens: true for completions (BOS via the post-processor), false for chat (the template adds it).
  // tokenizer_config.json's add_bos_token wins over tokenizer.json's post-processor, as in
  // transformers' LlamaTokenizerFast.
  encode(text: string, addSpecialTokens = true): number[] {
    const ids = this.tok.encode(text, { add_special_tokens: addSpecialTokens }).ids;
    if (!addSpecialTokens || this.bosId === null || this.addBosToken === null) return ids;
    const hasBos = ids[0] === this.bosId && !text.startsWith(this.bosToken!);
    if (this.addBosToken && !hasBos && ids[0] !== this.bosId) return [this.bosId, ...ids];
    if (!this.addBosToken && hasBos) return ids.slice(1);
    return ids;
  }

  decode(ids: number[], skipSpecialTokens = true): string {
    return this.tok.decode(ids, { skip_special_tokens: skipSpecialTokens });
  }

  isSpecial(id: number): boolean {
    return this.specialIds.has(id);
  }

  tokenId(token: string): number | undefined {
    return this.tok.token_to_id(token);
  }

  // The text one token stands for on its own, for logprobs ("▁there" → " there").
  tokenText(id: number): string {
    const cached = this.pieceText.get(id);
    if (cached !== undefined) return cached;
    const piece = this.tok.id_to_token(id) ?? '';
    const decoded = this.tok.decode([id], { skip_special_tokens: false });
    const text = piece.startsWith('▁') && !decoded.startsWith(' ') ? ` ${decoded}` : decoded;
    this.pieceText.set(id, text);
    return text;
  }

  // The bytes one token stands for, as OpenAI's chat logprobs report them (`bytes`, so that a
  // character split over tokens can be rebuilt): a byte-fallback piece <0xNN> is that one byte, a
  // byte-level piece its characters mapped back to bytes; otherwise the UTF-8 of its text. Decoding
  // such a token alone gives U+FFFD, whose bytes say nothing.
  tokenBytes(id: number): number[] {
    const cached = this.pieceBytes.get(id);
    if (cached !== undefined) return cached;
    const piece = this.tok.id_to_token(id) ?? '';
    const byte = this.byteFallback ? /^<0x([0-9A-Fa-f]{2})>$/.exec(piece) : null;
    const bytes = byte ? [parseInt(byte[1], 16)]
      : (this.byteLevel && !this.specialIds.has(id) && byteLevelBytes(piece)) || [...Buffer.from(this.tokenText(id), 'utf8')];
    this.pieceBytes.set(id, bytes);
    return bytes;
  }

  get vocabSize(): number {
    return this.tok.get_vocab(true).size;
  }
}

// GPT-2's byte-level alphabet (bytes_to_unicode): each byte is one printable character; a piece
// spelled in it maps back to its bytes. null if a character is outside the alphabet.
const BYTE_OF_CHAR: Map<string, number> = (() => {
  const printable = (b: number) => (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
  const m = new Map<string, number>();
  let n = 0;
  for (let b = 0; b < 256; b++) m.set(String.fromCharCode(printable(b) ? b : 256 + n++), b);
  return m;
})();

export function byteLevelBytes(piece: string): number[] | null {
  const out: number[] = [];
  for (const ch of piece) {
    const b = BYTE_OF_CHAR.get(ch);
    if (b === undefined) return null;
    out.push(b);
  }
  return out;
}

function tokenString(v: unknown): string | null {
  if (typeof v === 'string') return v;
  if (v && typeof v === 'object' && typeof (v as { content?: unknown }).content === 'string') return (v as { content: string }).content;
  return null;
}

// Incremental detokenization (as vLLM's detokenize_incrementally): decode a short window of
// context plus the new ids and emit only the new suffix. Text that ends in an incomplete UTF-8
// sequence (U+FFFD) is held back until the next token completes it.
export class StreamDecoder {
  private ids: number[];
  private prefixOffset: number;
  private readOffset: number;

  constructor(private readonly tok: TextTokenizer, contextIds: number[], private readonly skipSpecial = true) {
    this.ids = contextIds.slice(-6);
    this.prefixOffset = 0;
    this.readOffset = this.ids.length;
  }

  push(id: number): string {
    this.ids.push(id);
    const prefix = this.tok.decode(this.ids.slice(this.prefixOffset, this.readOffset), this.skipSpecial);
    const full = this.tok.decode(this.ids.slice(this.prefixOffset), this.skipSpecial);
    if (full.length <= prefix.length || full.endsWith('\uFFFD')) return '';
    const delta = full.startsWith(prefix) ? full.slice(prefix.length) : full.slice(commonPrefix(prefix, full));
    this.prefixOffset = this.readOffset;
    this.readOffset = this.ids.length;
    return delta;
  }

  // Whatever is still held back (an incomplete character at the very end) as replacement text.
  flush(): string {
    if (this.readOffset >= this.ids.length) return '';
    const prefix = this.tok.decode(this.ids.slice(this.prefixOffset, this.readOffset), this.skipSpecial);
    const full = this.tok.decode(this.ids.slice(this.prefixOffset), this.skipSpecial);
    this.readOffset = this.ids.length;
    return full.slice(commonPrefix(prefix, full));
  }
}

function commonPrefix(a: string, b: string): number {
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  return i;
}
