-- MOCK integration: answers from generated data without calling a backend.
local router = require "gwc.router"
local problem = require "gwc.problem"

local ngx = ngx
local var = ngx.var
local header = ngx.header

local _M = { _VERSION = "0.1.0" }

function _M.respond()
    local op = router.operation(var.gw_op)
    local mock = op and op.mock
    if not mock then
        return problem.respond(500)
    end
    ngx.status = mock.status
    header["Content-Type"] = mock.content_type
    local headers = mock.headers
    for i = 1, #headers do
        header[headers[i][1]] = headers[i][2]
    end
    local body = mock.body
    header["Content-Length"] = #body
    ngx.print(body)
end

return _M
