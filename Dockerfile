# gatehouse in a container: a build stage with the Rust toolchain, then a small Debian runtime
# with only the binary, CA roots, the example configuration and a non-root user.
#
#   docker build -t gatehouse .
#   docker run --rm -v gatehouse-state:/var/lib/gatehouse gatehouse user add alice --create-store
#   docker run -d -p 8080:8080 -v gatehouse-state:/var/lib/gatehouse gatehouse
#
# Your own configuration: -v /path/gatehouse.toml:/etc/gatehouse/gatehouse.toml:ro (keep the
# state paths below, or point them into the volume yourself).

# The toolchain the crate's rust-version asks for at least; the runtime below is the same Debian
# release, so the binary finds the glibc it was linked against.
FROM rust:1.89-bookworm AS build
WORKDIR /src
# Only what the build reads (.dockerignore keeps target/, data/ and the rest out).
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY benches benches
COPY config config
RUN cargo build --release --locked --bin gatehouse \
    && install -m 0755 target/release/gatehouse /usr/local/bin/gatehouse \
    && gatehouse completions bash > /gatehouse.bash \
    && mkdir /man1 && gatehouse man --dir /man1

FROM debian:bookworm-slim
# ca-certificates: the system roots for https:// upstreams and trusted issuers' JWKS.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/gatehouse \
       --shell /usr/sbin/nologin gatehouse \
    && install -d -m 0700 -o gatehouse -g gatehouse /var/lib/gatehouse
COPY --from=build /usr/local/bin/gatehouse /usr/local/bin/gatehouse
COPY --from=build /gatehouse.bash /usr/share/bash-completion/completions/gatehouse
COPY --from=build /man1/ /usr/share/man/man1/
COPY config/gatehouse.example.toml /etc/gatehouse/gatehouse.toml

# The example configuration listens on 127.0.0.1 and keeps its state next to itself; in a
# container the gateway listens on every interface and keeps its state in the volume. The admin
# listener (health, metrics) stays on the container's loopback: publish it deliberately, if at all.
ENV GATEHOUSE_CONFIG=/etc/gatehouse/gatehouse.toml \
    GATEHOUSE_SERVER__LISTEN=0.0.0.0:8080 \
    GATEHOUSE_STORE__PATH=/var/lib/gatehouse/gatehouse.db \
    GATEHOUSE_AUTH__KEYS_DIR=/var/lib/gatehouse/keys

USER gatehouse:gatehouse
WORKDIR /var/lib/gatehouse
VOLUME ["/var/lib/gatehouse"]
EXPOSE 8080

# GET /healthz on the admin listener (default 127.0.0.1:9901). The runtime image has no HTTP
# client; bash's /dev/tcp speaks enough HTTP/1.0 for a status line, and --timeout bounds it.
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9901 && printf 'GET /healthz HTTP/1.0\\r\\nHost: 127.0.0.1\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]

# SIGTERM (docker stop) drains in-flight requests within [server] shutdown_grace (30s by
# default): give docker stop a longer --time if you raise it. SIGHUP (docker kill -s HUP) reloads.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/gatehouse"]
CMD ["serve"]
