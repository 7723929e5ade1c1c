-- Mailjet-style traffic: per message a sent, an open, a click (distinct ids), single events
local counter = 0
tid = 0
local threads = {}
function setup(thread) thread:set("wid", tid); tid = tid + 1 end
function init(args)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Basic YmVuY2g6YmVuY2gtcGFzc3dvcmQ="
end
function request()
  counter = counter + 1
  local n = wid * 100000000 + counter
  local m = math.floor(n / 3)
  local kind = ({"sent","open","click"})[(n % 3) + 1]
  local body = string.format('{"event":"%s","time":%d,"MessageID":%d,"Message_GUID":"1ab23cd4-e567-8901-2345-6789f0gh1i2j","email":"user%d@example.com","mj_campaign_id":7173,"mj_contact_id":%d,"customcampaign":"","CustomID":"helloworld","Payload":"","ip":"127.0.0.1","geo":"US","agent":"Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0"}', kind, 1764320000 + math.floor(n/100), 1942177739 + m, m, 320 + n % 1000)
  return wrk.format(nil, "/hooks/mailjet", nil, body)
end
