#!/bin/bash
# alternate: gateway without access log (/plain) vs with (/plain, /observed)
cd /tmp/prof
run() { (taskset -c 1 python -m pygateway.cli run -c obs.yaml --listen 127.0.0.1:18090 --workers 1 --no-admin --no-metrics "$@" > gw.log 2>&1 &); sleep 3; }
stop() { pkill -INT -f "pygateway.cli run -c obs.yaml"; sleep 1.5; }
for r in 1 2; do
  run; echo "no log:"; ./ab.sh /plain; stop
  run --access-log /tmp/prof/access.log; echo "log:"; ./ab.sh /plain /observed; stop
done
