#!/bin/sh
# odhcp6c state script: hand the DHCPv6 AFTR-Name (RFC 6334, option 64) to dslite.
#
#   odhcp6c -s /usr/share/dslite/dslite-aftr-name.sh -r64 wan
#   dslite b4 --lan-iface br-lan --wan-iface wan --aftr-file /run/dslite/aftr
#
# odhcp6c runs this with the interface and the state as arguments and the AFTR name in
# $AFTR; dslite re-reads the file when it changes. The file is replaced atomically.
FILE=${DSLITE_AFTR_FILE:-/run/dslite/aftr}
case "$2" in
bound|updated|rebound|informed|ra-updated)
	[ -n "$AFTR" ] || exit 0
	mkdir -p "$(dirname "$FILE")" || exit 1
	printf '%s\n' "$AFTR" > "$FILE.tmp" && mv "$FILE.tmp" "$FILE"
	;;
esac
exit 0
