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
const CHECKPOINT_ID = pattern('ftckpt');

// The 24 digits: 12 of the creation time in ms (strictly increasing within the process), then 12
// random ones. So ids sort in creation order: lists made in one second keep it, and a page cursor
// (`after`) naming an item deleted since still has a place in the list (manager.ts page).
let lastMs = 0;
export const newId = (prefix: 'file' | 'ftjob' | 'ftevent' | 'ftckpt'): string => {
  lastMs = Math.max(Date.now(), lastMs + 1);
  return `${prefix}-${lastMs.toString(16).padStart(12, '0')}${randomBytes(6).toString('hex')}`;
};
export const isFileId = (id: unknown): boolean => typeof id === 'string' && FILE_ID.test(id);
export const isJobId = (id: unknown): boolean => typeof id === 'string' && JOB_ID.test(id);
export const isEventId = (id: unknown): boolean => typeof id === 'string' && EVENT_ID.test(id);
export const isCheckpointId = (id: unknown): boolean => typeof id === 'string' && CHECKPOINT_ID.test(id);

// A job's short id in its model name (`<base>:ft-<suffix>-<short id>`): its last 8 hex digits (random;
// the first ones are the time, shared by jobs made within a minute).
export const shortId = (jobId: string): string => jobId.slice(-8);

export const FILE_ID_PATTERN = FILE_ID.source;
export const JOB_ID_PATTERN = JOB_ID.source;
