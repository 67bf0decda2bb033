#!/usr/bin/env bash
# One-command reproduction: set up .venv, run a benchmark profile, write results, tables and plots.
#   ./run_all.sh                               # the `default` profile into results/default
#   ./run_all.sh --profile smoke --out DIR     # another profile into DIR
#   ./run_all.sh --dry-run                     # print the plan and an estimate only
# Data: $GLUE_DIR (classic glue_data/ layout); if unset, glue_data/ in the checkout (setup links the
# copy beside it there), else the Hub: the same resolution as every `de3bert` command.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
profile=default
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="$2"; shift 2 ;;
    --profile=*) profile="${1#*=}"; shift ;;
    *) args+=("$1"); shift ;;
  esac
done
data=$(.venv/bin/python -c "from de3bert.data import resolve_data_dir; print(resolve_data_dir() or '<Hub: nyu-mll/glue>')")
echo "[run_all] profile=$profile data=$data"
if [ "$profile" = default ] || [ "$profile" = smoke ]; then
  export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}   # these profiles need nothing from the Hub
fi
exec .venv/bin/de3bert run --profile "$profile" "${args[@]}"
