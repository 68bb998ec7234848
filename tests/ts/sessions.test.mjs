// The compatibility suite (suite.mjs) against a server without API keys, as the quick start runs it on loopback.

import { defineSuite } from './suite.mjs';

defineSuite();
