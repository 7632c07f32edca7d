#!/bin/bash
# Issue 14's measurements in one sitting (docs/PERFORMANCE.md, "Issue 14:
# where it stands"): every command alternates three daemon trees.
#
#   git worktree add /tmp/wt-final-comp HEAD && (cd /tmp/wt-final-comp && python setup.py build_ext --inplace)
#   git worktree add /tmp/wt-final-pure HEAD
#   git worktree add /tmp/wt-before <the commit to compare with>   (compiled in place if it can be)
#   git worktree add /tmp/wt-issue-start ec05535    # optional: before issue 14 (pure), for the pure build's regression check
#   bash bench/campaign_issue14.sh            # logs in /tmp/campaign
#
# About 20 minutes on 2 cores (the steady state alone 13); only loopback.
# Issue 14 campaign: side by side, alternated. Trees: /tmp/wt-final-comp, /tmp/wt-final-pure, /tmp/wt-before.
cd "$(dirname "$0")/.."
ROOT="$PWD"
export PATH="$ROOT/.venv/bin:$PATH"
PY=.venv/bin/python
L=/tmp/campaign; mkdir -p $L
TREES="final-comp final-pure before"
[ -d /tmp/wt-issue-start ] && TREES="$TREES issue-start"
echo "start $(date -u +%T)" > $L/times.txt
# 1. Kamailio side by side, cold start, 20k and 100k, rate 50000, two rounds, alternated.
for size in 20000 100000; do
  for round in 1 2; do
    for t in $TREES; do
      echo "=== $t $size round $round $(date -u +%T)" >> $L/kam.log
      UACREG_BENCH_TREE=/tmp/wt-$t $PY bench/kamailio_uac.py --accounts $size --rate 50000 2>&1 | tail -4 >> $L/kam.log
    done
  done
done
echo "kam done $(date -u +%T)" >> $L/times.txt
# 1b. The same on Debian's /usr/bin/python3 (PGO/LTO; the venv's packages on PYTHONPATH), 100k, one run each.
for t in final-comp final-pure; do
  echo "=== debian $t 100000 $(date -u +%T)" >> $L/kam-debian.log
  UACREG_BENCH_TREE=/tmp/wt-$t PYTHONPATH="$ROOT/.venv/lib/python3.11/site-packages" /usr/bin/python3 bench/kamailio_uac.py --accounts 100000 --rate 50000 2>&1 | tail -4 >> $L/kam-debian.log
done
echo "debian done $(date -u +%T)" >> $L/times.txt
# 2. Memory and core CPU: core_cycle 100k, two rounds, alternated.
for round in 1 2; do
  for t in $TREES; do
    echo "=== $t round $round" >> $L/core.log
    (cd /tmp/wt-$t && PYTHONPATH=/tmp/wt-$t "$ROOT/.venv/bin/python" "$ROOT/bench/core_cycle.py" --accounts 100000 2>&1 | tail -1) >> $L/core.log
  done
done
echo "core done $(date -u +%T)" >> $L/times.txt
# 3. Per module.
(ulimit -v 4000000; $PY bench/compiled_modules.py --compiled /tmp/wt-final-comp --pure /tmp/wt-final-pure --rounds 2) > $L/modules.log 2>&1
echo "modules done $(date -u +%T)" >> $L/times.txt
# 4. First REGISTER at 100k.
UACREG_BENCH_TREE=/tmp/wt-final-comp $PY bench/first_register.py --accounts 100000 --runs 2 --before /tmp/wt-before > $L/first.log 2>&1
echo "first done $(date -u +%T)" >> $L/times.txt
# 5. Profiles, before and after (py-spy --gil, 100k).
UACREG_BENCH_TREE=/tmp/wt-before $PY bench/cold_start_sipp.py --accounts 100000 --rate 50000 --py-spy $L/spy-before.txt > $L/spy-before.log 2>&1
UACREG_BENCH_TREE=/tmp/wt-final-comp $PY bench/cold_start_sipp.py --accounts 100000 --rate 50000 --py-spy $L/spy-after.txt > $L/spy-after.log 2>&1
echo "profiles done $(date -u +%T)" >> $L/times.txt
# 6. Cluster on this host, compiled.
$PY bench/cluster_scale.py --tree /tmp/wt-final-comp --accounts 100000 --rounds 1 --nodes 1 --nodes 2 --no-digest-pair > $L/cluster.log 2>&1
echo "cluster done $(date -u +%T)" >> $L/times.txt
# 7. Steady state, compiled, side by side.
UACREG_BENCH_TREE=/tmp/wt-final-comp $PY bench/kamailio_uac.py --accounts 100000 --steady 300 --expiry 300 > $L/steady.log 2>&1
echo "steady done $(date -u +%T)" >> $L/times.txt
