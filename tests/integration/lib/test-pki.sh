# A throwaway test CA and certificates it signs, for the host tests and the
# VM packaging test (P-256, valid two days; keys mode 0600).
#
#   test_pki_ca DIR CN             DIR/ca.pem and DIR/ca.key
#   test_pki_cert DIR NAME SAN     DIR/NAME.pem and DIR/NAME.key, CN=NAME,
#                                  subjectAltName SAN (say DNS:server.test)
test_pki_ca() {
  local dir=$1 cn=$2
  mkdir -p "$dir" &&
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$dir/ca.key" -out "$dir/ca.pem" \
      -days 2 -subj "/CN=$cn" 2>/dev/null &&
    chmod 600 "$dir/ca.key"
}

test_pki_cert() {
  local dir=$1 name=$2 san=$3
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$dir/$name.key" -out "$dir/$name.csr" \
    -subj "/CN=$name" 2>/dev/null &&
    printf 'subjectAltName=%s\n' "$san" >"$dir/$name.ext" &&
    openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
      -out "$dir/$name.pem" -days 2 -extfile "$dir/$name.ext" 2>/dev/null &&
    chmod 600 "$dir/$name.key"
}
