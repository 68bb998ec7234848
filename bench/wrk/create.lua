-- wrk script for createSession: POST /api/messaging/sessions for the demo echo agent, with the metadata of the
-- reference page's example. Run against the baseline too (its POST row), so that both get the same request.
wrk.method = "POST"
wrk.path = "/api/messaging/sessions"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"agentId":"3c90c3cc-0d44-4b50-8888-8dd25736052a",'
  .. '"userId":"3c90c3cc-0d44-4b50-8888-8dd25736052a",'
  .. '"metadata":{"platform":"web","username":"ada"}}'
