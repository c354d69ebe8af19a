#!/bin/bash
# tapsec-vm: timeout=90
# The guest kernel provides every offload tapsec installs keys into: the kTLS
# ULP and its statistics, XFRM ESP with AES-GCM, WireGuard links, and the
# network namespaces and veth pairs the other scenarios build on.
# Fails on the first missing piece, naming it.
set -u

failures=0
check() {
    local what=$1
    shift
    local output
    if output=$("$@" 2>&1); then
        echo "ok   - $what"
    else
        echo "FAIL - $what"
        [[ -n $output ]] && sed 's/^/       /' <<<"$output"
        failures=$((failures + 1))
    fi
}

tls_ulp_available() {
    modprobe tls || return 1
    grep -qw tls /proc/sys/net/ipv4/tcp_available_ulp ||
        { echo "tcp_available_ulp: $(cat /proc/sys/net/ipv4/tcp_available_ulp)"; return 1; }
}

wireguard_link() {
    ip link add wg0 type wireguard || return 1
    ip link show wg0 && ip link del wg0
}

esp_gcm_state() {
    # A throwaway SA; the key is 16 bytes of AES key plus 4 bytes of salt.
    ip xfrm state add src 192.0.2.1 dst 192.0.2.2 proto esp spi 0x1000 mode transport \
        aead 'rfc4106(gcm(aes))' 0x0102030405060708090a0b0c0d0e0f1011121314 128 || return 1
    ip xfrm state get src 192.0.2.1 dst 192.0.2.2 proto esp spi 0x1000 | grep -q 'rfc4106(gcm(aes))' || return 1
    ip xfrm state flush
}

netns_veth_ping() {
    ip netns add tapsec-a && ip netns add tapsec-b || return 1
    ip link add veth-a netns tapsec-a type veth peer name veth-b netns tapsec-b || return 1
    ip -n tapsec-a addr add 10.99.0.1/24 dev veth-a && ip -n tapsec-a link set veth-a up &&
        ip -n tapsec-b addr add 10.99.0.2/24 dev veth-b && ip -n tapsec-b link set veth-b up || return 1
    ip netns exec tapsec-a busybox ping -c 1 -W 2 10.99.0.2 || return 1
    ip netns del tapsec-a && ip netns del tapsec-b
}

echo "kernel $(uname -r) ($TAPSEC_VM_KERNEL)"
check "tls in net.ipv4.tcp_available_ulp after modprobe tls" tls_ulp_available
check "/proc/net/tls_stat exists" test -e /proc/net/tls_stat
check "ip link add wg0 type wireguard" wireguard_link
check "ESP state with aead rfc4106(gcm(aes))" esp_gcm_state
check "network namespaces joined by a veth pair" netns_veth_ping
check "/tmp is writable" touch /tmp/tapsec-features-probe

if ((failures)); then
    echo "$failures feature check(s) failed"
    exit 1
fi
echo "all feature checks passed"
