# ---- builder ---------------------------------------------------------------
# The crate needs Rust >= 1.89 (edition 2024, std file locks); the floating 1.x tag satisfies that.
FROM rust:1-bookworm AS builder
WORKDIR /app

# Dependencies first, against a dummy crate, so this layer stays cached until
# Cargo.toml or Cargo.lock change.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo build --release --locked

COPY src ./src
# include_str! embeds the report schema at compile time.
COPY schemas ./schemas
# COPY keeps the context's mtimes, which can be older than the dummy build;
# touching makes cargo rebuild the crate instead of shipping the dummy binary.
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked

# ---- runtime ---------------------------------------------------------------
FROM debian:bookworm-slim

# ca-certificates: the gateway calls Kiva's API over HTTPS.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# Fixed uid so volume ownership and Kubernetes runAsUser are predictable.
RUN groupadd --gid 10001 gateway \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin gateway

COPY --from=builder /app/target/release/repayment-gateway /usr/local/bin/repayment-gateway
# The real gateway.toml is mounted at run time; the example documents every key.
COPY config/gateway.example.toml /etc/repayment-gateway/gateway.example.toml

# The embedded store's default home (store.url = "embedded:/var/lib/repayment-gateway");
# unused when the configuration names Redis.
RUN mkdir -p /var/lib/repayment-gateway && chown 10001:10001 /var/lib/repayment-gateway
WORKDIR /var/lib/repayment-gateway
VOLUME ["/var/lib/repayment-gateway"]

# Numeric, so runAsNonRoot can verify it without reading /etc/passwd.
USER 10001
EXPOSE 8080
# The built-in default is 127.0.0.1, unreachable from outside the container.
ENV GATEWAY_SERVER__BIND=0.0.0.0:8080

# The slim image has no curl: `repayment-gateway healthcheck` probes GET /health/ready on
# the configured bind address (docker-compose.yml uses it). Orchestrators may probe
# GET /health/live and GET /health/ready on port 8080 directly.
HEALTHCHECK --interval=10s --timeout=6s --start-period=20s --retries=3 \
  CMD ["repayment-gateway", "healthcheck", "--config", "/etc/repayment-gateway/gateway.toml"]

# Exec form: the binary is PID 1 and gets SIGTERM itself, so it drains
# in-flight requests before exiting.
ENTRYPOINT ["repayment-gateway"]
CMD ["serve", "--config", "/etc/repayment-gateway/gateway.toml"]
