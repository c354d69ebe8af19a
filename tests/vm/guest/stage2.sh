#!/bin/bash
# Second stage of a tapsec test guest, run by the host's bash after
# switch_root into the shared host root. Loads the offload modules, then runs
# the scenario (or a shell) and reports on the console:
#   TAPSEC-VM-MODULES loaded=... builtin=... missing=...
#   TAPSEC-VM-BEGIN scenario=<name>
#   TAPSEC-VM-RESULT scenario=<name> status=<exit code>
# and powers off.

export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TERM=${TERM:-linux}
cd /

power_off() {
    sync
    /usr/bin/busybox poweroff -f
    sleep 10
}

# shellcheck source=/dev/null
source /run/tapsec/env || { echo "TAPSEC-VM-RESULT scenario=- status=125"; power_off; }

ip link set lo up

offload_modules=(tls esp4 esp6 xfrm_user xfrm_algo gcm ccm chacha20poly1305
                 aesni_intel drbg jitterentropy_rng seqiv wireguard veth)
# One modprobe for all: each extra process start costs about half a second
# under TCG. Which ones loaded is read back from /sys/module afterwards.
modprobe -a -q "${offload_modules[@]}" 2>/dev/null
builtin_list=$(cat "/lib/modules/$(uname -r)/modules.builtin" 2>/dev/null)
loaded=() builtin=() missing=()
for module in "${offload_modules[@]}"; do
    pattern="/${module//_/[_-]}.ko"
    if [[ $builtin_list == *$pattern* ]]; then
        builtin+=("$module")
    elif [[ -d /sys/module/$module ]] || modprobe -q "$module" 2>/dev/null; then
        loaded+=("$module")
    else
        missing+=("$module")
    fi
done
join() { local IFS=,; echo "$*"; }
echo "TAPSEC-VM-MODULES loaded=$(join "${loaded[@]}") builtin=$(join "${builtin[@]}") missing=$(join "${missing[@]}")"

if [[ $TAPSEC_VM_MODE == shell ]]; then
    echo "tapsec-vm: kernel $(uname -r) ($TAPSEC_VM_KERNEL); the host root is read-only, /tmp /run /root /var/* are tmpfs."
    echo "tapsec-vm: leave with 'exit' (or Ctrl-A X)."
    cd "$TAPSEC_SOURCE_DIR" || cd /
    setsid -c bash -i </dev/ttyS0 >/dev/ttyS0 2>&1
    power_off
fi

scenario_name=$(basename "$TAPSEC_VM_SCENARIO" .sh)
echo "TAPSEC-VM-BEGIN scenario=$scenario_name"
cd "$TAPSEC_SOURCE_DIR" || { echo "TAPSEC-VM-RESULT scenario=$scenario_name status=125"; power_off; }
bash "$TAPSEC_VM_SCENARIO" </dev/null 2>&1
status=$?
echo "TAPSEC-VM-RESULT scenario=$scenario_name status=$status"
power_off
