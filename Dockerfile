# cutover in a container: the base of the proxy fleet's image (the folder `cutover proxy
# terraform` writes adds the plan to it), and a place to run any other command next to the
# new database.
#
#   docker build -t cutover .
#   docker run --rm -v "$PWD/cutover.toml:/etc/cutover/cutover.toml:ro" -e ... cutover check
#
# A plan holds no secret (passwords are `${VARIABLES}`, read at start), so it may be part of an
# image; the secrets come from the environment (ECS: the task definition's `secrets`).

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p cutover-cli \
 && strip target/release/cutover \
 && cp target/release/cutover /usr/local/bin/cutover

FROM debian:bookworm-slim
# The PostgreSQL client programs (pg_dump, pg_restore, psql) of the newest major, from the
# PostgreSQL project's own repository: pg_dump must be at least as new as the source server.
ARG PG_MAJOR=17
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl gnupg \
 && curl -fsSL https://www.postgresql.org/media/keys/ACCC4CF8.asc \
    | gpg --dearmor -o /usr/share/keyrings/pgdg.gpg \
 && echo "deb [signed-by=/usr/share/keyrings/pgdg.gpg] https://apt.postgresql.org/pub/repos/apt bookworm-pgdg main" \
    > /etc/apt/sources.list.d/pgdg.list \
 && apt-get update \
 && apt-get install -y --no-install-recommends "postgresql-client-${PG_MAJOR}" \
 && apt-get purge -y curl gnupg && apt-get autoremove -y \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --home-dir /var/lib/cutover --create-home cutover
COPY --from=build /usr/local/bin/cutover /usr/local/bin/cutover
USER cutover
WORKDIR /var/lib/cutover
ENV CUTOVER_PLAN=/etc/cutover/cutover.toml
# 6432: PostgreSQL clients; 9187: /live, /ready, /metrics.
EXPOSE 6432 9187
STOPSIGNAL SIGTERM
ENTRYPOINT ["cutover"]
CMD ["proxy"]
