// Ids of files, jobs, events and checkpoints: a prefix and 24 lowercase hex digits (OpenAI's
// shapes: file-…, ftjob-…, ftevent-…, ftckpt-…). Ids name directories under the data directory, so
// an id from a request is used only once it matches its strict pattern (isFileId, isJobId): nothing
// else ever becomes a path, and a string that does not match is simply "no such file/job".
import { randomBytes } from 'node:crypto';

const HEX = 24;
const pattern = (prefix: string) => new RegExp(`^${prefix}-[0-9a-f]{${HEX}}$`);
const FILE_ID = pattern('file');
const JOB_ID = pattern('ftjob');
const EVENT_ID = pattern('ftevent');

export const newId = (prefix: 'file' | 'ftjob' | 'ftevent' | 'ftckpt'): string => `${prefix}-${randomBytes(HEX / 2).toString('hex')}`;
export const isFileId = (id: unknown): boolean => typeof id === 'string' && FILE_ID.test(id);
export const isJobId = (id: unknown): boolean => typeof id === 'string' && JOB_ID.test(id);
export const isEventId = (id: unknown): boolean => typeof id === 'string' && EVENT_ID.test(id);

// A job's short id in its model name (`<base>:ft-<suffix>-<short id>`): its first 8 hex digits.
export const shortId = (jobId: string): string => jobId.slice('ftjob-'.length, 'ftjob-'.length + 8);

export const FILE_ID_PATTERN = FILE_ID.source;
export const JOB_ID_PATTERN = JOB_ID.source;
