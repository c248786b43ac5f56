# Which Python facefleet uses on this host, read-only (the preflight decides, release.yml
# installs). $1: the operator's interpreter (facefleet_python), or empty for the automatic
# choice: python3 when it is 3.9 or newer, else the distribution's python3.9 (JetPack 5 has
# Python 3.8 as python3 and python3.9 in Ubuntu 20.04's archive). Prints one JSON object:
# python (path), version (X.Y.Z, empty when there is none to use), python3 (its version),
# packages (Debian packages to install first: the interpreter and its venv module).
set -u
want=$1
version_of() {
    "$1" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null
}
# Debian/Ubuntu: the version the archive would install, "3.9.5-3ubuntu0~20.04.1" -> "3.9.5"
candidate_of() {
    apt-cache policy "$1" 2>/dev/null | sed -n 's/^ *Candidate: *\([0-9][0-9.]*\).*/\1/p' | head -n 1
}
has_venv() {
    "$1" -c 'import ensurepip, venv' 2>/dev/null
}
python3=$(version_of /usr/bin/python3)
python=${want:-/usr/bin/python3}
version=$(version_of "$python")
packages=""
if [ -z "$want" ]; then
    case $version in
        3.[0-8].* | "")
            python=/usr/bin/python3.9
            version=$(version_of "$python")
            if [ -z "$version" ]; then
                version=$(candidate_of python3.9)
                [ -n "$version" ] && packages="python3.9 python3.9-venv"
            elif ! has_venv "$python"; then
                packages="python3.9-venv"
            fi
            ;;
        *)
            has_venv "$python" || packages="python3-venv"
            ;;
    esac
fi
printf '{"python": "%s", "version": "%s", "python3": "%s", "packages": "%s"}\n' \
    "$python" "$version" "$python3" "$packages"
