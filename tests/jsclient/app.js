// A minimal app that consumes the client the way an application would: by
// its package name, resolved through the package's `exports`, bundled with
// esbuild (format iife, global `GangwayApp`). The package test drives it.
import { GangwayClient, Call } from 'gangway-client';
import pkg from 'gangway-client/package.json' with { type: 'json' };

export { GangwayClient, Call };
export const packageVersion = pkg.version;
