# CI only (.ci/docker-smoke): the debootstrapped bookworm (python3, python3-venv) plus this
# machine's CA bundle, so that pip inside a build trusts the same authorities as the host's pip.
# The build context is a temporary directory holding nothing but ca-certificates.crt.
ARG MINBASE=optim-base:bookworm-minbase
FROM ${MINBASE}
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    LANG=C.UTF-8
CMD ["python3"]
