#!/bin/bash
# Embedding vs one-hot for categorical columns (docs/training.md, "Tables"): `ensemble-train ensemble`
# with default flags on two small local tables (vega_datasets' barley and cars), two seeds each (the seed
# also moves the held-out split, so compare runs of the same seed). Prints one line per run.
set -euo pipefail
work=${1:-$(mktemp -d)}
python - "$work" <<'PY'
import sys
from vega_datasets import local_data
local_data.barley().to_csv(f"{sys.argv[1]}/barley.csv", index=False)
local_data.cars().drop(columns=["Name"]).to_csv(f"{sys.argv[1]}/cars.csv", index=False)
PY
for enc in embedding onehot; do
  for seed in 0 1; do
    for spec in "barley.csv yield --categorical year" "cars.csv Origin --categorical Cylinders"; do
      set -- $spec
      line=$(ensemble-train ensemble --data "$work/$1" --target "$2" "$3" "$4" --cat-encoding "$enc" \
        --seed "$seed" --quiet --repository "$work/repo-$enc" --name "$(basename "$1" .csv)" | grep '^ensemble')
      echo "$enc seed=$seed $1 $line"
    done
  done
done
