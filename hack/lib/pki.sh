# shellcheck shell=bash
# Certificates and kubeconfigs for the local Kubernetes scripts
# (hack/control-plane.sh, hack/local-cluster.sh). Sourced; the caller sets
# PKI_DIR (where keys and certificates live) before calling these.

# pki NAME: the path of NAME (e.g. ca.crt) in PKI_DIR.
pki() {
	echo "${PKI_DIR}/$1"
}

# make_ca NAME SUBJECT: a self-signed P-256 CA.
make_ca() {
	local name="$1" subject="$2"
	openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$(pki "${name}.key")" 2>/dev/null
	openssl req -x509 -new -key "$(pki "${name}.key")" -subj "${subject}" -days 3650 -sha256 \
		-addext "basicConstraints=critical,CA:TRUE" \
		-addext "keyUsage=critical,keyCertSign,cRLSign" \
		-out "$(pki "${name}.crt")"
}

# sign NAME SUBJECT EXTENSIONS [CA]: a P-256 key and a certificate signed by CA (default ca).
sign() {
	local name="$1" subject="$2" extensions="$3" ca="${4:-ca}"
	openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$(pki "${name}.key")" 2>/dev/null
	openssl req -new -key "$(pki "${name}.key")" -subj "${subject}" -out "$(pki "${name}.csr")"
	openssl x509 -req -in "$(pki "${name}.csr")" -CA "$(pki "${ca}.crt")" -CAkey "$(pki "${ca}.key")" \
		-CAcreateserial -days 365 -sha256 -out "$(pki "${name}.crt")" \
		-extfile <(printf '%s\n' "[ext]" "${extensions}") -extensions ext 2>/dev/null
	rm -f "$(pki "${name}.csr")" "$(pki "${ca}.srl")"
}

# Extensions of a client certificate (for sign).
# shellcheck disable=SC2034 # used by the scripts that source this file
PKI_CLIENT_EXTENSIONS="basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"

# write_kubeconfig FILE SERVER CLIENT: a kubeconfig for CLIENT's certificate,
# trusting ca.crt, with the certificates inlined.
write_kubeconfig() {
	local file="$1" server="$2" client="$3"
	cat >"${file}" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: nvsentinel-local
  cluster:
    server: ${server}
    certificate-authority-data: $(base64 -w0 <"$(pki ca.crt)")
users:
- name: ${client}
  user:
    client-certificate-data: $(base64 -w0 <"$(pki "${client}.crt")")
    client-key-data: $(base64 -w0 <"$(pki "${client}.key")")
contexts:
- name: nvsentinel-local
  context:
    cluster: nvsentinel-local
    user: ${client}
current-context: nvsentinel-local
EOF
	chmod 600 "${file}"
}
