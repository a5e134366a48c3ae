# Myelin homeserver image: built from source in a Rust image, run as a non-root user in a
# slim Debian. Build:  docker build -t myelin .
# Run:    docker run -p 8008:8008 -p 7880:7880 -p 7882:7882/udp \
#           -v myelin-data:/var/lib/myelin -e MYELIN_SERVER_NAME=example.com \
#           -e MYELIN_PUBLIC_BASE_URL=https://matrix.example.com \
#           -e MYELIN_RTC_LIVEKIT_URL=wss://sfu.example.com \
#           -e MYELIN_SFU_EXTERNAL_IP=203.0.113.7 myelin
# Calls: the SFU listens on MYELIN_SFU_LISTEN (0.0.0.0:7880 here) once MYELIN_RTC_LIVEKIT_URL
# names the public wss:// URL a TLS proxy forwards to it (deploy/caddy, deploy/nginx); all
# media uses the one published UDP port MYELIN_SFU_UDP_PORT (7882), and MYELIN_SFU_EXTERNAL_IP
# must name the host's public address for media to reach it.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p myelin --bin myelin \
    && install -D -m 0755 target/release/myelin /out/myelin

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system myelin \
    && useradd --system --gid myelin --home-dir /var/lib/myelin --shell /usr/sbin/nologin myelin \
    && install -d -o myelin -g myelin -m 0700 /var/lib/myelin
COPY --from=build /out/myelin /usr/local/bin/myelin
COPY config/myelin.toml /etc/myelin/myelin.toml.example

USER myelin
WORKDIR /var/lib/myelin
ENV MYELIN_LISTEN=0.0.0.0:8008 \
    MYELIN_DATA_DIR=/var/lib/myelin \
    MYELIN_SFU_LISTEN=0.0.0.0:7880 \
    MYELIN_SFU_UDP_PORT=7882
VOLUME ["/var/lib/myelin"]
EXPOSE 8008 7880 7882/udp
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["curl", "-fsS", "http://127.0.0.1:8008/health"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/myelin"]
CMD ["serve"]
