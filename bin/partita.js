#!/usr/bin/env node
import { main } from '../dist/runtime/cli.js';

main(process.argv.slice(2)).then(
  (code) => {
    if (typeof code === 'number') process.exitCode = code;
  },
  (err) => {
    console.error(err?.stack ?? String(err));
    process.exit(1);
  },
);
