// n8n's community-node lint rules, without the n8n Cloud profile: the node gzips and gunzips the
// file routes' archives with node:zlib, which n8n Cloud does not allow (self-hosted n8n does).
import { configWithoutCloudSupport } from '@n8n/node-cli/eslint';

export default [{ ignores: ['test/**'] }, ...configWithoutCloudSupport];
