#!/usr/bin/env bash
# Run rotel in the foreground with the settings in rotel.env. Stop it with Ctrl-C.
#
#   collector-config/run-rotel.sh                               # traces to the dashboard
#   ROTEL_EXPORTERS_TRACES=jaeger collector-config/run-rotel.sh  # traces to Jaeger
#   collector-config/run-rotel.sh --debug-log traces             # also print every span
#
# Variables already set in the environment override rotel.env (ROTEL_ENV_FILE names
# another file). Arguments go to `rotel-agent start`. KAYGRAPH_OTEL_DASHBOARD_TOKEN, when
# set, becomes the dashboard exporter's Authorization header. The rotel-agent binary is
# found through the Python that has the rotel package: PYTHON, else the repository's
# .venv, else python3; ROTEL_AGENT_PATH names the binary directly.
set -euo pipefail

config_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
env_file=${ROTEL_ENV_FILE:-$config_dir/rotel.env}

while IFS= read -r line || [[ -n $line ]]; do
    if [[ $line =~ ^[[:space:]]*(#|$) ]]; then
        continue
    fi
    name=${line%%=*}
    if [[ $line != *=* || ! $name =~ ^ROTEL_[A-Z0-9_]+$ ]]; then
        echo "run-rotel.sh: invalid line in $env_file: '$line', expected ROTEL_NAME=value" >&2
        exit 2
    fi
    if [[ ! -v $name ]]; then
        export "$name=${line#*=}"
    fi
done < "$env_file"

if [[ -n ${KAYGRAPH_OTEL_DASHBOARD_TOKEN:-} && ! -v ROTEL_EXPORTER_DASHBOARD_CUSTOM_HEADERS ]]; then
    export ROTEL_EXPORTER_DASHBOARD_CUSTOM_HEADERS="Authorization=Bearer $KAYGRAPH_OTEL_DASHBOARD_TOKEN"
fi

if [[ -z ${ROTEL_AGENT_PATH:-} ]]; then
    python=${PYTHON:-}
    if [[ -z $python && -x $config_dir/../.venv/bin/python ]]; then
        python=$config_dir/../.venv/bin/python
    fi
    python=${python:-python3}
    locate='import pathlib, rotel; print(pathlib.Path(rotel.__file__).with_name("rotel-agent"))'
    if ! ROTEL_AGENT_PATH=$("$python" -c "$locate" 2>/dev/null); then
        echo "run-rotel.sh: the rotel package is not installed for $python;" \
            "install it with \`$python -m pip install rotel\` or set ROTEL_AGENT_PATH" >&2
        exit 2
    fi
fi

exec "$ROTEL_AGENT_PATH" start "$@"
