import type { IAuthenticateGeneric, ICredentialTestRequest, ICredentialType, Icon, INodeProperties } from "n8n-workflow";

/** The manager's URL and an API key, sent as `X-API-Key`. */
export class RunDatSheeshApi implements ICredentialType {
  name = "runDatSheeshApi";
  displayName = "Run Dat Sheesh API";
  icon: Icon = { light: "file:rds.svg", dark: "file:rds.dark.svg" };
  documentationUrl = "https://github.com/run-dat-sheesh/rds/blob/main/docs/api.md";
  properties: INodeProperties[] = [
    { displayName: "Base URL", name: "baseUrl", type: "string", default: "http://127.0.0.1:3000", required: true },
    { displayName: "API Key", name: "apiKey", type: "string", typeOptions: { password: true }, default: "", required: true },
  ];
  authenticate: IAuthenticateGeneric = {
    type: "generic",
    properties: { headers: { "X-API-Key": "={{$credentials.apiKey}}" } },
  };
  test: ICredentialTestRequest = {
    request: { baseURL: "={{$credentials.baseUrl}}", url: "/v1/vms" },
  };
}
