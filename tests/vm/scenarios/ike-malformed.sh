#!/bin/bash
# tapsec-vm: timeout=180
# Garbage at the agent's IKE ports: truncated headers, wrong versions, huge
# lengths, bogus payload chains, a non-ESP marker on 4500 and random bytes,
# sent from beta to alpha's UDP 500 and 4500. tapsecd drops them, stays up,
# keeps its established tunnel and still answers a fresh IKE_SA_INIT.
set -u
lib=${TAPSEC_SOURCE_DIR:-.}/tests/vm
source "$lib/lib/ipsec-hosts.sh"; source "$lib/lib/strongswan.sh"; source "$lib/lib/ike-lab.sh"
ike_need_tapsec
ike_lab two

tapsec_policy_tunnel "$IKE_WORK/alpha" to-beta Peer=192.0.2.2 LocalId=alpha.example RemoteId=beta.example \
  LocalTS=10.1.0.0/24 RemoteTS=10.2.0.0/24
tapsec_start alpha "$IKE_WORK/alpha" || ike_fail "tapsecd did not start"
# reuse_ikesa = no: otherwise charon answers "initiate probe" below with its
# established IKE SA of the same peer and identities and sends nothing.
charon_start "$NS_BETA" "$IKE_WORK/beta" "reuse_ikesa = no" || ike_fail "charon did not start"
swan_peer "$IKE_WORK/beta" from-alpha 192.0.2.2 192.0.2.1 10.2.0.0/24 10.1.0.0/24 beta.example alpha.example
charon_load "$IKE_WORK/beta" || ike_fail "loading beta"
tapsec_ctl alpha tunnel up to-beta && tapsec_wait_assoc alpha esp established 30 || ike_fail "tunnel up"

# From a port charon does not hold, so its own sockets are not involved.
ipsec_on beta python3 - <<'PY' || ike_fail "the packet generator failed"
import os, random, socket, struct
random.seed(4555)
def header(ispi, rspi, next_payload, version, exchange, flags, msgid, length):
    return struct.pack("!8s8sBBBBII", ispi, rspi, next_payload, version, exchange, flags, msgid, length)
ispi = os.urandom(8)
packets = [
    b"", b"\x00", header(ispi, bytes(8), 33, 0x20, 34, 0x08, 0, 28)[:20],   # truncated header
    header(ispi, bytes(8), 33, 0x10, 34, 0x08, 0, 28),                       # IKEv1 version
    header(ispi, bytes(8), 33, 0x20, 34, 0x08, 0, 0xFFFFFFFF),               # length far beyond the datagram
    header(ispi, bytes(8), 33, 0x20, 34, 0x08, 0, 20),                       # length below the header
    header(ispi, bytes(8), 33, 0x20, 34, 0x08, 0, 32) + b"\x00\x00\xff\xff", # payload length past the end
    header(ispi, bytes(8), 33, 0x20, 34, 0x08, 0, 32) + b"\x21\x00\x00\x04", # payload chain that never ends
    header(ispi, bytes(8), 99, 0x20, 34, 0x08, 0, 32) + b"\x00\x80\x00\x04", # unknown critical payload
    header(ispi, os.urandom(8), 46, 0x20, 35, 0x00, 7, 60) + os.urandom(32), # SK for an unknown SA
]
packets += [os.urandom(random.randrange(1, 1500)) for _ in range(200)]
for port in (500, 4500):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("192.0.2.2", 40000 + port))
    for p in packets:
        # On 4500 IKE carries a four-byte zero marker; send both with and without.
        for data in ((p, b"\x00\x00\x00\x00" + p) if port == 4500 else (p,)):
            s.sendto(data, ("192.0.2.1", port))
print("sent", len(packets), "datagrams per port and marker")
PY
sleep 2
tapsec_alive alpha || ike_fail "tapsecd died on malformed input"
tapsec_ctl alpha status >/dev/null || ike_fail "tapsecd stopped answering on its bus"
[[ -n $(tapsec_assoc_field alpha esp id established) ]] || ike_fail "the established tunnel was lost"
ike_ping_ok 3 || ike_fail "traffic after the garbage"
# A real IKE_SA_INIT is still answered: charon initiates a second IKE SA.
swan_peer "$IKE_WORK/beta" probe 192.0.2.2 192.0.2.1 10.2.0.0/24 10.1.0.0/24 beta.example alpha.example
charon_load "$IKE_WORK/beta" && charon_initiate_ike "$IKE_WORK/beta" probe 20 ||
  ike_fail "tapsecd no longer completes an IKE_SA after the garbage"
(($(tapsec_assoc_count alpha ikev2 established) == 2)) ||
  ike_fail "tapsecd does not show the probe as a second established IKE SA"
echo "PASS: malformed IKE datagrams dropped, agent up"
