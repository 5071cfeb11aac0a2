#!/bin/sh
# Install revnat64 on Asuswrt-Merlin with Entware.  Run on the router:
#   sh install.sh /tmp/revnat64-VERSION-py3-none-any.whl
#
# Entware's python3 comes from opkg; pyroute2 and the other Python packages
# are not in Entware, so pip installs them next to revnat64 into
# $DEST/lib, and $DEST/bin/revnat64 runs it from there.  The hooks in
# /jffs/scripts are created or appended to, each line only once, so running
# this again (e.g. to upgrade) changes nothing else.
set -eu

WHEEL=${1:?usage: sh install.sh revnat64-VERSION-py3-none-any.whl}
DEST=${DEST:-/jffs/revnat64}
JFFS_SCRIPTS=${JFFS_SCRIPTS:-/jffs/scripts}
HERE=$(cd "$(dirname "$0")" && pwd)

opkg update
opkg install python3 python3-pip

mkdir -p "$DEST/bin" "$DEST/lib" "$DEST/hooks" "$DEST/state"
pip3 install --upgrade --no-cache-dir --target "$DEST/lib" "$WHEEL"

cat >"$DEST/bin/revnat64" <<EOT
#!/bin/sh
PYTHONPATH="$DEST/lib" exec python3 -m publisher.cli "\$@"
EOT
chmod 0755 "$DEST/bin/revnat64"

cp "$HERE/services-start" "$HERE/firewall-start" "$HERE/wan-event" "$DEST/hooks/"
chmod 0755 "$DEST/hooks/services-start" "$DEST/hooks/firewall-start" "$DEST/hooks/wan-event"

if [ ! -f "$DEST/mappings.yaml" ]; then
	PYTHONPATH="$DEST/lib" python3 - "$DEST" <<'EOT'
import sys
from importlib import resources
dest = sys.argv[1]
text = (resources.files("publisher") / "data" / "mappings.yaml.example").read_text()
text = text.replace("state_dir: /var/lib/revnat64", f"state_dir: {dest}/state")
text = text.replace("backend: nftables ", "backend: iptables  ")
text = text.replace("control_socket: /run/", "control_socket: /var/run/")
open(f"{dest}/mappings.yaml", "w").write(text)
EOT
	echo "wrote $DEST/mappings.yaml: edit it, then run: $DEST/bin/revnat64 check -c $DEST/mappings.yaml"
fi

# add_hook NAME LINE: make /jffs/scripts/NAME a shell script holding LINE once.
add_hook() {
	file=$JFFS_SCRIPTS/$1
	mkdir -p "$JFFS_SCRIPTS"
	[ -f "$file" ] || printf '#!/bin/sh\n' >"$file"
	grep -qxF -- "$2" "$file" || printf '%s\n' "$2" >>"$file"
	chmod 0755 "$file"
}
add_hook services-start "sh $DEST/hooks/services-start # revnat64"
add_hook firewall-start "sh $DEST/hooks/firewall-start \"\$@\" # revnat64"
add_hook wan-event "sh $DEST/hooks/wan-event \"\$@\" # revnat64"

# Merlin runs /jffs/scripts only with this setting on.
if command -v nvram >/dev/null 2>&1 && [ "$(nvram get jffs2_scripts)" != 1 ]; then
	nvram set jffs2_scripts=1
	nvram commit
fi
echo "installed; start now with: sh $DEST/hooks/services-start"
