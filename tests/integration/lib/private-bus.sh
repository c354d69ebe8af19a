# A private D-Bus daemon for one test agent, sourced by the host test
# libraries (hosts.sh) and the VM lab (tests/vm/lib/ike-lab.sh).
#
#   private_bus_start DIR     writes DIR/bus.conf, starts the daemon on
#                             unix:path=DIR/bus and its pid in DIR/bus.pid;
#                             any user who can reach DIR may connect
private_bus_start() {
  local dir=$1
  cat >"$dir/bus.conf" <<CONF
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path=$dir/bus</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
    <allow own="*"/>
    <allow user="*"/>
  </policy>
</busconfig>
CONF
  dbus-daemon --config-file="$dir/bus.conf" --fork --print-pid >"$dir/bus.pid"
}
