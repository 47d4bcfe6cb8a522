#!/usr/bin/env bash
# Talk to an ensemble-serving server with curl: health, metadata, a V2 JSON infer and a V1 predict.
#
#   examples/curl.sh [URL] [MODEL] [ROW]
#   URL   default $ENSEMBLE_URL or http://127.0.0.1:8000
#   MODEL default $ENSEMBLE_MODEL or digits
#   ROW   comma-separated features of one row, default $ENSEMBLE_ROW (required one way or the other)
#
# Prints one "<step>: <JSON>" line per call; exits non-zero (curl's code, 22 for an HTTP error) on the first
# failure, after printing the server's {"error": ...} body.
set -euo pipefail

URL="${1:-${ENSEMBLE_URL:-http://127.0.0.1:8000}}"
MODEL="${2:-${ENSEMBLE_MODEL:-digits}}"
ROW="${3:-${ENSEMBLE_ROW:-}}"
if [[ -z "$ROW" ]]; then
  echo "usage: $0 [URL] [MODEL] ROW   (ROW: comma-separated features, or set ENSEMBLE_ROW)" >&2
  exit 2
fi
N_FEATURES=$(($(tr -cd ',' <<<"$ROW" | wc -c) + 1))

call() {  # call STEP METHOD PATH [JSON-BODY]
  local step=$1 method=$2 path=$3 body=${4:-}
  local args=(-sS --fail-with-body -X "$method" "$URL$path")
  [[ -n "$body" ]] && args+=(-H 'Content-Type: application/json' -d "$body")
  local out
  out=$(curl "${args[@]}") || { echo "$step failed: $out" >&2; return 1; }
  echo "$step: $out"
}

call live GET /v2/health/live
call ready GET "/v2/models/$MODEL/ready"
META=$(call metadata GET "/v2/models/$MODEL")
echo "$META"
# The input's name from the metadata (the server writes compact JSON: "inputs":[{"name":"..."}]).
INPUT=$(sed -E 's/.*"inputs":\[\{"name":"([^"]+)".*/\1/' <<<"$META")
call v2_infer POST "/v2/models/$MODEL/infer" \
  "{\"id\": \"curl-1\", \"inputs\": [{\"name\": \"$INPUT\", \"datatype\": \"FP32\", \"shape\": [1, $N_FEATURES], \"data\": [$ROW]}]}"
call v1_predict POST "/v1/models/$MODEL:predict" "{\"instances\": [[$ROW]]}"
