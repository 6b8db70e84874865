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
WORKDIR /app
COPY --from=builder /app /app
# the default adapter store (--adapters ./adapters), writable by the server's user
RUN mkdir -p /app/adapters && chown 1000:1000 /app/adapters
USER 1000:1000
EXPOSE 8080
ENTRYPOINT ["node", "bin/loraserve.js"]
CMD ["serve", "--host", "0.0.0.0"]
