# What the host tests need for WireGuard links, sourced by them.
#
#   wireguard_require   exits 77 (skipped) unless this machine runs WireGuard
#                       links: root, kernel WireGuard or wireguard-go over
#                       TUN, and wg; sets WG_OFFLOAD to "kernel" or "userspace"
wireguard_require() {
  [[ $(id -u) -eq 0 ]] || { echo "SKIPPED: needs root for network namespaces" >&2; exit 77; }
  if ! ip link add tapsec-wg-probe type wireguard 2>/dev/null; then
    command -v wireguard-go >/dev/null || { echo "SKIPPED: neither kernel WireGuard nor wireguard-go here" >&2; exit 77; }
    [[ -c /dev/net/tun ]] || { echo "SKIPPED: no /dev/net/tun for wireguard-go" >&2; exit 77; }
    WG_OFFLOAD=userspace
  else
    ip link del tapsec-wg-probe
    WG_OFFLOAD=kernel
  fi
  command -v wg >/dev/null || { echo "SKIPPED: wg (wireguard-tools) is not installed" >&2; exit 77; }
  export WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1
}
