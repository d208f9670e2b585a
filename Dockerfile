# Multi-stage build: compile with the Rust toolchain image, run on a slim
# Debian with only the binary, as an unprivileged user.
#
#   docker build -t hubbub .
#   docker run -p 3001:3001 -e HUBBUB_JWT_SECRET=... -v hubbub-data:/var/lib/hubbub hubbub
#
# Docker's default seccomp profile blocks io_uring on recent engines; hubbub
# then falls back to epoll by itself and logs a warning (HUBBUB_DRIVER=epoll
# makes that explicit). To keep io_uring, run with a seccomp profile that
# allows io_uring_setup, io_uring_enter and io_uring_register.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, so that code changes reuse the cached layer.
COPY Cargo.toml Cargo.lock ./
COPY loadgen/Cargo.toml loadgen/Cargo.toml
# Cargo.toml declares the criterion bench: cargo wants its file to exist.
RUN mkdir -p src/demo clients/js loadgen/src benches \
    && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && echo 'fn main() {}' > loadgen/src/main.rs \
    && echo 'fn main() {}' > benches/hotpaths.rs \
    && cargo build --release --locked --bin hubbub \
    && rm -rf src loadgen/src
COPY src src
COPY clients clients
COPY loadgen loadgen
COPY benches benches
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin hubbub

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/hubbub --create-home hubbub
COPY --from=build /src/target/release/hubbub /usr/local/bin/hubbub
USER hubbub
ENV HUBBUB_LISTEN=0.0.0.0:3001 \
    HUBBUB_DATA_DIR=/var/lib/hubbub \
    HUBBUB_LOG_FORMAT=json
VOLUME /var/lib/hubbub
EXPOSE 3001
STOPSIGNAL SIGTERM
# Liveness, not readiness: an outage of MongoDB or Redis makes every node
# unready at once, and restarting nodes would not cure it.
HEALTHCHECK --interval=10s --timeout=3s CMD ["/usr/local/bin/hubbub", "alive"]
ENTRYPOINT ["/usr/local/bin/hubbub"]
