#!/usr/bin/env bash
# Chat with a model, each reply scored by a reward model. Every variable below can be set from the environment:
#   MODEL=qwen2.5-1.5b-instruct REWARD_MODEL=llm_judge scripts/dialogue.sh
# Extra arguments go to `inferencekit chat` as they are. DRY_RUN=1 prints the command instead of running it.
set -euo pipefail

MODEL="${MODEL:-smollm2-135m}"               # a model preset (inferencekit list models)
MODEL_PATH="${MODEL_PATH:-}"                 # a local folder, .gguf file or hub id; used instead of MODEL
BACKEND="${BACKEND:-}"                       # hf | llamacpp | openai (default: inferred)
REWARD_MODEL="${REWARD_MODEL:-}"             # a reward model preset or format, e.g. llm_judge (empty: none)
REWARD_MODEL_PATH="${REWARD_MODEL_PATH:-}"   # a reward model folder or hub id; used instead of REWARD_MODEL
AGGREGATION="${AGGREGATION:-}"               # how step scores make one reward: min | last | prod | mean | model
SYSTEM="${SYSTEM:-}"                         # system prompt
TEMPERATURE="${TEMPERATURE:-}"
MAX_NEW_TOKENS="${MAX_NEW_TOKENS:-}"
INFERENCEKIT="${INFERENCEKIT:-inferencekit}" # the command, e.g. "python -m inferencekit.cli"

args=(chat --model "${MODEL_PATH:-$MODEL}")
reward_model="${REWARD_MODEL_PATH:-$REWARD_MODEL}"
add() { if [[ -n "$2" ]]; then args+=("$1" "$2"); fi; }
add --backend "$BACKEND"
add --reward-model "$reward_model"
add --aggregation "$AGGREGATION"
add --system "$SYSTEM"
add --temperature "$TEMPERATURE"
add --max-new-tokens "$MAX_NEW_TOKENS"

read -r -a command <<<"$INFERENCEKIT"
if [[ -n "${DRY_RUN:-}" ]]; then
  printf '%q ' "${command[@]}" "${args[@]}" "$@"
  echo
  exit 0
fi
exec "${command[@]}" "${args[@]}" "$@"
