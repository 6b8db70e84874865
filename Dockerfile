# loraserve image: the server with the bundled default model (stories260K, models/default) and its
# demo adapters. Two stages: the builder installs the dependencies from the lockfile (npm ci, no
# install scripts: .npmrc), the runtime stage copies the result onto node:20-slim. Nothing is
# fetched at run time; it runs as a non-root user (uid 1000, numeric so that Kubernetes'
# runAsNonRoot can check it).
#   docker build -t loraserve:0.1.0 .
#   docker run --rm -p 8080:8080 loraserve:0.1.0
# Another model: mount its directory and pass --model (deploy/kubernetes/README.md).

FROM node:20-slim AS builder
WORKDIR /app
COPY package.json package-lock.json .npmrc ./
# production dependencies only (tsx, which runs the TypeScript sources, is one of them)
RUN npm ci --omit=dev && npm cache clean --force
COPY tsconfig.json ./
COPY bin ./bin
COPY src ./src
COPY models ./models

FROM node:20-slim
ENV NODE_ENV=production
# glibc (≥ 2.35) then asks for transparent huge pages for large allocations: the first touch of KV
# rows and adapter buffers costs ~10× less (README, "Memory and huge pages")
ENV GLIBC_TUNABLES=glibc.malloc.hugetlb=1
WORKDIR /app
COPY --from=builder /app /app
# the default adapter store (--adapters ./adapters), writable by the server's user
RUN mkdir -p /app/adapters && chown 1000:1000 /app/adapters
USER 1000:1000
EXPOSE 8080
ENTRYPOINT ["node", "bin/loraserve.js"]
CMD ["serve", "--host", "0.0.0.0"]
