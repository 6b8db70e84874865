// The fine-tuning job, event and checkpoint objects in OpenAI's shapes (the official client reads
// them as is), plus loraserve's `lora` object (the LoRA settings of the run).
export type JobStatus = 'validating_files' | 'queued' | 'running' | 'succeeded' | 'failed' | 'cancelled';
export const TERMINAL: readonly JobStatus[] = ['succeeded', 'failed', 'cancelled'];
export const isTerminal = (s: JobStatus): boolean => TERMINAL.includes(s);

export interface Hyperparameters {
  n_epochs: number;
  batch_size: number;
  learning_rate_multiplier: number;
}

// loraserve's extra: the LoRA run's settings (docs/fine-tuning.md), every field resolved.
export interface LoraSettings {
  rank: number;
  alpha: number;
  targets: string[];
  learning_rate: number;   // the base learning rate × learning_rate_multiplier unless given
  dropout: number;
  seq_len: number;
}

export interface FineTuningJob {
  id: string;
  object: 'fine_tuning.job';
  created_at: number;
  finished_at: number | null;
  error: { code: string; message: string; param: string | null } | null;
  fine_tuned_model: string | null;
  model: string;
  organization_id: string;
  result_files: string[];
  seed: number;
  status: JobStatus;
  trained_tokens: number | null;
  training_file: string;
  validation_file: string | null;
  estimated_finish: number | null;
  integrations: [];
  metadata: Record<string, string> | null;
  user_provided_suffix: string | null;
  hyperparameters: Hyperparameters;
  method: { type: 'supervised'; supervised: { hyperparameters: Hyperparameters } };
  lora: LoraSettings;
}

export interface JobEvent {
  id: string;
  object: 'fine_tuning.job.event';
  created_at: number;
  level: 'info' | 'warn' | 'error';
  message: string;
  type: 'message' | 'metrics';
  data: Record<string, unknown> | null;
}

export interface JobCheckpoint {
  id: string;
  object: 'fine_tuning.job.checkpoint';
  created_at: number;
  fine_tuned_model_checkpoint: string;
  fine_tuning_job_id: string;
  step_number: number;
  metrics: { step: number; train_loss: number | null; valid_loss: number | null };
}

// What is persisted per job (job.json): the job as served, and what only the server needs.
export interface JobRecord {
  job: FineTuningJob;
  adapter: string;          // the store name of its adapter: ft-<suffix>-<short id>
  checkpoints: JobCheckpoint[];
}
