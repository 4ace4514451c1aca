#!/bin/busybox sh
# shellcheck shell=sh
# udhcpc's event script in the installer: sets the address and route it was given.
# shellcheck disable=SC2154 # interface, ip, mask and router come from udhcpc's environment.
bb=/bin/busybox
case $1 in
bound | renew)
    $bb ip addr flush dev "$interface"
    $bb ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$router" ] && $bb ip route add default via "${router%% *}" dev "$interface"
    ;;
esac
exit 0
