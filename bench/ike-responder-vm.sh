#!/bin/bash
# tapsec-vm: timeout=135
# Responder throughput: one charon initiator (alpha) brings up N IKE SAs,
# each with one ESP SA, against (a) a charon responder and (b) tapsecd as
# responder (beta), in the same guest run. Prints establishments per second
# for each and tapsec's rate relative to charon's:
#   BENCH responder=charon n=N seconds=S rate=R/s
#   BENCH responder=tapsec n=N seconds=S rate=R/s
#   BENCH ratio tapsec/charon=X
# The initiator is N distinct connections loaded with start_action=start, so
# charon initiates them all at once without one swanctl process per SA
# (Debian builds no load-tester plugin). Each connection proposes its own
# /32 pair inside 10.1.0.0/24 <-> 10.2.0.0/24, so every ESP SA gets its own
# policies. Under TCG the absolute numbers mean little; the ratio does.
# BENCH_N (default 100, at most 250) sets N; BENCH_MIN_RATIO, when set, fails
# the run if tapsec's rate falls below that fraction of charon's.
set -u
lib=${TAPSEC_SOURCE_DIR:-.}/tests/vm
source "$lib/lib/ipsec-hosts.sh"; source "$lib/lib/strongswan.sh"; source "$lib/lib/ike-lab.sh"
ike_need_tapsec
# Both responders log what an operator keeps by default, no debugging
# detail: per-packet lines would be measured too.
export TAPSEC_LOG_LEVEL=info
export SWAN_LOG_DEFAULT=0 SWAN_LOG_IKE=0 SWAN_LOG_KNL=0 SWAN_LOG_CFG=0
n=${BENCH_N:-100}
((n >= 1 && n <= 250)) || { echo "BENCH_N must be 1..250" >&2; exit 2; }
ike_lab two

# The initiator: connections bench-1..N, started the moment they load.
write_initiator() {
  local dir=$1 i
  rm -f "$dir"/swanctl/conf.d/*.conf
  for i in $(seq "$n"); do
    swan_peer "$dir" "bench-$i" 192.0.2.1 192.0.2.2 "10.1.0.$i/32" "10.2.0.$i/32" alpha.example beta.example \
      start_action=start keyingtries=1
  done
}

# run_against LABEL: starts a fresh initiator, loads it, and waits until the
# responder side (read by the caller-supplied established_count) has N.
rate_line=""
# Both runs count the same way, on the initiator (an IKE_AUTH response
# arrives once the responder has installed the Child SA): asking the
# responder itself would load one of the two responders and not the other.
# Initiator and responder share the guest's two vCPUs, so the wall-clock
# rate is bounded by the initiator; the responder's own CPU time (user +
# system, which includes its XFRM netlink work in the kernel) gives the
# establishments per responder CPU-second, the figure the ratio compares.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
measure() {  # LABEL RESPONDER_PID CHECK_FUNCTION
  local label=$1 responder=$2 check=$3 dir=$IKE_WORK/initiator-$1
  initiator_installed() { charon_child_count "$dir" INSTALLED; }
  charon_start "$NS_ALPHA" "$dir" "max_ikev2_exchanges = 5" || ike_fail "initiator charon ($label)"
  write_initiator "$dir"
  local start_ns end_ns cpu_before cpu_after deadline=$((SECONDS + 300))
  cpu_before=$(cpu_ticks "$responder")
  start_ns=$(date +%s%N)
  charon_load "$dir" || ike_fail "loading the initiator ($label)"
  until (($(initiator_installed) >= n)); do
    ((SECONDS < deadline)) || ike_fail "$label: only $(initiator_installed) of $n established after 300 s"
    sleep 0.1
  done
  end_ns=$(date +%s%N)
  cpu_after=$(cpu_ticks "$responder")
  "$check" || ike_fail "$label: the responder does not list $n Child SAs"
  local seconds rate cpu cpu_rate hz
  hz=$(getconf CLK_TCK)
  seconds=$(awk -v a="$start_ns" -v b="$end_ns" 'BEGIN { printf "%.3f", (b - a) / 1e9 }')
  rate=$(awk -v s="$seconds" -v n="$n" 'BEGIN { printf "%.2f", n / s }')
  cpu=$(awk -v a="$cpu_before" -v b="$cpu_after" -v hz="$hz" 'BEGIN { printf "%.3f", (b - a) / hz }')
  cpu_rate=$(awk -v c="$cpu" -v n="$n" 'BEGIN { printf "%.2f", (c > 0) ? (n / c) : 0 }')
  echo "BENCH responder=$label n=$n seconds=$seconds rate=$rate/s responder_cpu=${cpu}s per_cpu_second=$cpu_rate"
  rate_line+="cpu_$label=$cpu_rate wall_$label=$rate "
  charon_stop "$dir"
}
# (a) charon as responder: one connection accepting every /32 pair; unique=never
# keeps the N IKE SAs from the same identity side by side.
charon_start "$NS_BETA" "$IKE_WORK/charon-responder" || ike_fail "responder charon"
swan_peer "$IKE_WORK/charon-responder" bench 192.0.2.2 192.0.2.1 10.2.0.0/24 10.1.0.0/24 beta.example alpha.example \
  unique=never
charon_load "$IKE_WORK/charon-responder" || ike_fail "loading the responder"
charon_all_installed() { (($(charon_child_count "$IKE_WORK/charon-responder" INSTALLED) == n)); }
measure charon "$(cat "$IKE_WORK/charon-responder/charon.pid")" charon_all_installed
charon_stop "$IKE_WORK/charon-responder"
ip -n "$NS_ALPHA" xfrm state flush; ip -n "$NS_ALPHA" xfrm policy flush

# (b) tapsecd as responder with the equivalent tunnel.
tapsec_policy_tunnel "$IKE_WORK/tapsec-responder" bench Peer=192.0.2.1 LocalId=beta.example RemoteId=alpha.example \
  LocalTS=10.2.0.0/24 RemoteTS=10.1.0.0/24
tapsec_start beta "$IKE_WORK/tapsec-responder" || ike_fail "tapsecd did not start"
tapsec_all_installed() { (($(tapsec_assoc_count beta esp established) == n)); }
# tapsecd.pid is the shell that started it; take the agent itself.
measure tapsec "$(pgrep -n -f "tapsecd .*$IKE_WORK/tapsec-responder/")" tapsec_all_installed

charon_rate=$(sed -n 's/.*cpu_charon=\([0-9.]*\).*/\1/p' <<<"$rate_line")
tapsec_rate=$(sed -n 's/.*cpu_tapsec=\([0-9.]*\).*/\1/p' <<<"$rate_line")
wall_charon=$(sed -n 's/.*wall_charon=\([0-9.]*\).*/\1/p' <<<"$rate_line")
wall_tapsec=$(sed -n 's/.*wall_tapsec=\([0-9.]*\).*/\1/p' <<<"$rate_line")
ratio=$(awk -v t="$tapsec_rate" -v c="$charon_rate" 'BEGIN { printf "%.3f", t / c }')
wall_ratio=$(awk -v t="$wall_tapsec" -v c="$wall_charon" 'BEGIN { printf "%.3f", t / c }')
echo "BENCH ratio tapsec/charon per responder CPU-second=$ratio (wall clock, initiator-bound: $wall_ratio)"
if [[ -n ${BENCH_MIN_RATIO:-} ]] && awk -v r="$ratio" -v m="$BENCH_MIN_RATIO" 'BEGIN { exit !(r < m) }'; then
  echo "FAIL: tapsec responds at $ratio of charon's rate, below $BENCH_MIN_RATIO"
  exit 1
fi
