// The live dashboard: static files from gateway/dashboard/ (beside this module in the source tree,
// two levels up from the compiled one) and uPlot from the package's dependencies. No build step.
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import type { FastifyInstance } from 'fastify';
import { sendError } from './http-error.js';

function dashboardDir(): string {
  for (const rel of ['./dashboard/', '../../gateway/dashboard/']) {
    const dir = fileURLToPath(new URL(rel, import.meta.url));
    if (existsSync(`${dir}index.html`)) return dir;
  }
  throw new Error('gateway/dashboard/index.html not found beside the gateway module');
}

const TYPES: Record<string, string> = {
  js: 'text/javascript; charset=utf-8',
  css: 'text/css; charset=utf-8',
  html: 'text/html; charset=utf-8',
  svg: 'image/svg+xml',
};

/** Every file is read once, at start. */
function loadAssets(): Map<string, { body: Buffer; type: string }> {
  const dir = dashboardDir();
  const require = createRequire(import.meta.url);
  const uplot = require.resolve('uplot/dist/uPlot.iife.min.js');
  const files: [string, string][] = [
    ['app.js', `${dir}app.js`],
    ['rollup.js', `${dir}rollup.js`],
    ['favicon.svg', `${dir}favicon.svg`],
    ['style.css', `${dir}style.css`],
    ['uPlot.iife.min.js', uplot],
    ['uPlot.min.css', uplot.replace(/uPlot\.iife\.min\.js$/, 'uPlot.min.css')],
  ];
  const assets = new Map<string, { body: Buffer; type: string }>();
  for (const [name, path] of files) {
    assets.set(name, { body: readFileSync(path), type: TYPES[name.split('.').pop()!]! });
  }
  assets.set('index.html', { body: readFileSync(`${dir}index.html`), type: TYPES.html! });
  return assets;
}

const escapeAttr = (s: string) => s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

export async function dashboardRoutes(app: FastifyInstance): Promise<void> {
  const assets = loadAssets();
  const html = assets.get('index.html')!.body.toString('utf8');

  app.get<{ Querystring: { access_token?: string } }>(
    '/',
    {
      schema: {
        summary: 'The live dashboard (open as /?access_token=<token> when tokens are configured)',
        tags: ['dashboard'],
        querystring: {
          type: 'object',
          properties: { access_token: { type: 'string' } },
        },
        response: { 200: { type: 'string', description: 'text/html' } },
      },
    },
    async (req, reply) => {
      // The page loads its assets and opens its WebSocket with the token it was opened with.
      const t = req.query.access_token;
      const qs = t ? `?access_token=${encodeURIComponent(t)}` : '';
      reply
        .type(TYPES.html!)
        .header('cache-control', 'no-store')
        .header(
          'content-security-policy',
          "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:",
        );
      return html.replaceAll('__QS__', escapeAttr(qs));
    },
  );

  // The page names its icon (with its token); browsers ask /favicon.ico of every other page
  // (/metrics, the OpenAPI document): the same icon rather than a 404. It needs a token like every
  // route but /healthz, so with tokens those pages' icon requests answer 401.
  const icon = assets.get('favicon.svg')!;
  app.get(
    '/favicon.ico',
    { schema: { summary: "The dashboard's icon (SVG)", tags: ['dashboard'], hide: true } },
    async (_req, reply) => reply.type(icon.type).header('cache-control', 'max-age=86400').send(icon.body),
  );

  app.get<{ Params: { file: string } }>(
    '/dashboard/:file',
    {
      schema: {
        summary: "The dashboard's scripts and styles",
        tags: ['dashboard'],
        params: { type: 'object', properties: { file: { type: 'string' } } },
        querystring: { type: 'object', properties: { access_token: { type: 'string' } } },
      },
    },
    async (req, reply) => {
      const a = assets.get(req.params.file);
      if (!a || req.params.file === 'index.html') {
        return sendError(reply, 'PARTITA_ERR_NOT_FOUND', `no dashboard file ${req.params.file}`);
      }
      reply.type(a.type).header('cache-control', 'no-cache');
      return a.body;
    },
  );
}
