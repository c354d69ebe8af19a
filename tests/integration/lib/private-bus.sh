# A private D-Bus daemon for one test agent, sourced by the host test
# libraries (hosts.sh) and the VM lab (tests/vm/lib/ike-lab.sh).
#
#   private_bus_start DIR [POLICY]
#                             writes DIR/bus.conf, starts the daemon on
#                             unix:path=DIR/bus and its pid in DIR/bus.pid.
#                             Without POLICY anyone may own any name; with
#                             it (a bus policy file such as
#                             dbus/system.d/org.tapsec1.conf) the daemon
#                             denies by default as a system bus does and
#                             includes POLICY. Either way any user who can
#                             reach DIR may connect.
private_bus_start() {
  local dir=$1 policy=${2:-}
  local rules='  <policy context="default">
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
    <allow own="*"/>
    <allow user="*"/>
  </policy>'
  if [[ -n $policy ]]; then
    rules="  <policy context=\"default\">
    <allow user=\"*\"/>
    <deny own=\"*\"/>
    <deny send_type=\"method_call\"/>
    <allow send_type=\"signal\"/>
    <allow send_requested_reply=\"true\" send_type=\"method_return\"/>
    <allow send_requested_reply=\"true\" send_type=\"error\"/>
    <allow receive_type=\"method_call\"/>
    <allow receive_type=\"method_return\"/>
    <allow receive_type=\"error\"/>
    <allow receive_type=\"signal\"/>
    <allow send_destination=\"org.freedesktop.DBus\" send_interface=\"org.freedesktop.DBus\"/>
  </policy>
  <include>$policy</include>"
  fi
  cat >"$dir/bus.conf" <<CONF
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path=$dir/bus</listen>
  <auth>EXTERNAL</auth>
$rules
</busconfig>
CONF
  dbus-daemon --config-file="$dir/bus.conf" --fork --print-pid >"$dir/bus.pid"
}
