import sys
from pathlib import Path

from cryptography import x509

path = Path(sys.argv[1])
if not path.exists():
    print("missing")
    raise SystemExit(0)
cert = x509.load_pem_x509_certificate(path.read_bytes())
try:
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
except x509.ExtensionNotFound:
    names = []
print("\n".join(sorted(str(getattr(n, "value", n)) for n in names)))
