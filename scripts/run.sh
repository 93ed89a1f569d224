#!/usr/bin/env bash
# Run a benchmark with inferencekit. Every variable below can be set from the environment, e.g.
#   MODEL_NAME=qwen2.5-1.5b-instruct DATASET_NAME=math500 DATA_DIR=../shared/data LIMIT=50 scripts/run.sh
# Extra arguments go to `inferencekit run` as they are (e.g. scripts/run.sh --no-resume).
# DRY_RUN=1 prints the command instead of running it.
set -euo pipefail

WORK_DIR="${WORK_DIR:-results}"              # run folders go to $WORK_DIR/<dataset>/<model>+<reward model>+<exp>
MODEL_NAME="${MODEL_NAME:-smollm2-135m}"     # a model preset (inferencekit list models)
MODEL_PATH="${MODEL_PATH:-}"                 # a local folder, .gguf file or hub id; used instead of MODEL_NAME
BACKEND="${BACKEND:-}"                       # hf | llamacpp | openai (default: inferred)
DATASET_NAME="${DATASET_NAME:-gsm8k-mini}"   # gsm8k | math500 | aime24 | amc23 | gsm8k-mini | a table file
DATA_DIR="${DATA_DIR:-}"                     # folder with <dataset>/test.jsonl
LIMIT="${LIMIT:-}"                           # only the first K problems
METHOD="${METHOD:-cot}"                      # inferencekit list methods
N="${N:-}"                                   # samples per problem
REWARD_MODEL_NAME="${REWARD_MODEL_NAME:-}"   # a reward model preset or format (inferencekit list reward-models)
REWARD_MODEL_PATH="${REWARD_MODEL_PATH:-}"   # a reward model folder or hub id; used instead of REWARD_MODEL_NAME
AGGREGATION="${AGGREGATION:-}"               # min | last | prod | mean | model
VOTE="${VOTE:-}"                             # e.g. majority,weighted,best
TEMPERATURE="${TEMPERATURE:-}"
MAX_NEW_TOKENS="${MAX_NEW_TOKENS:-}"
SEED="${SEED:-}"
EXP_NAME="${EXP_NAME:-}"
INFERENCEKIT="${INFERENCEKIT:-inferencekit}" # the command, e.g. "python -m inferencekit.cli"

args=(run --model "${MODEL_PATH:-$MODEL_NAME}" --dataset "$DATASET_NAME" --work-dir "$WORK_DIR" --method "$METHOD")
reward_model="${REWARD_MODEL_PATH:-$REWARD_MODEL_NAME}"
add() { if [[ -n "$2" ]]; then args+=("$1" "$2"); fi; }
add --backend "$BACKEND"
add --data-dir "$DATA_DIR"
add --limit "$LIMIT"
add --n "$N"
add --reward-model "$reward_model"
add --aggregation "$AGGREGATION"
add --vote "$VOTE"
add --temperature "$TEMPERATURE"
add --max-new-tokens "$MAX_NEW_TOKENS"
add --seed "$SEED"
add --exp-name "$EXP_NAME"

read -r -a command <<<"$INFERENCEKIT"
if [[ -n "${DRY_RUN:-}" ]]; then
  printf '%q ' "${command[@]}" "${args[@]}" "$@"
  echo
  exit 0
fi
exec "${command[@]}" "${args[@]}" "$@"
