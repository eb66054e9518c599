// make bench's Node peer: what a team would otherwise pick for a BFF. Express, with Auth0's
// express-openid-connect keeping the session (tokens included) in an encrypted, rolling cookie,
// and http-proxy-middleware forwarding /api/demo/* to the upstream with the access token as a
// Bearer header (refreshed first when it has expired), over kept-alive connections.
//
//   node server.js ISSUER CLIENT_ID CLIENT_SECRET BASE_URL UPSTREAM PORT
//
// Prints "listening on URL" when ready, as bench/serve.py does.
"use strict";

const crypto = require("node:crypto");
const http = require("node:http");
const express = require("express");
const { auth, requiresAuth } = require("express-openid-connect");
const { createProxyMiddleware } = require("http-proxy-middleware");

const [issuer, clientID, clientSecret, baseURL, upstream, port] = process.argv.slice(2);
if (!port) {
  console.error("usage: node server.js ISSUER CLIENT_ID CLIENT_SECRET BASE_URL UPSTREAM PORT");
  process.exit(2);
}

const app = express();
app.use(
  auth({
    issuerBaseURL: issuer,
    baseURL,
    clientID,
    clientSecret,
    secret: crypto.randomBytes(32).toString("hex"),
    authRequired: false,
    idpLogout: false,
    authorizationParams: { response_type: "code", scope: "openid profile email offline_access" },
  }),
);

app.use("/api/demo", requiresAuth(), async (req, res, next) => {
  try {
    if (req.oidc.accessToken.isExpired()) {
      await req.oidc.accessToken.refresh();
    }
    next();
  } catch (error) {
    next(error);
  }
});

app.use(
  "/api/demo",
  createProxyMiddleware({
    target: upstream,
    changeOrigin: true,
    agent: new http.Agent({ keepAlive: true, maxSockets: 64 }),
    on: {
      proxyReq(proxyReq, req) {
        proxyReq.setHeader("Authorization", `Bearer ${req.oidc.accessToken.access_token}`);
        proxyReq.removeHeader("Cookie");
      },
    },
  }),
);

http.createServer(app).listen(Number(port), "127.0.0.1", () => {
  console.log(`listening on http://127.0.0.1:${port}`);
});
