'use strict';
// Independent OCPP CSMS (1.6J and 2.0.1) for cpagent's test-suite, built on
// ocpp-rpc in strict mode so that every frame a charger sends is checked
// against the official JSON schemas by code that shares nothing with ours.
// `--protocols ocpp2.0.1,ocpp1.6` lists the subprotocols it agrees to, in its
// own order of preference (ocpp-rpc picks the first the charger offers).
//
// Protocol with the Python wrapper (tests/ocpp_rpc_csms.py), one JSON object
// per line:
//   stdout: {"event": ...} notifications, and {"id": N, "ok": ...} replies
//   stdin:  {"id": N, "cmd": "set" | "call" | "drop" | "list", ...}
// The process exits as soon as stdin closes, so a test run that dies cannot
// leave a server behind.
//
// With `--settings FILE` the settings are re-read from FILE before each
// charger call is answered instead of coming from "set" commands: a file the
// test wrote synchronously is certain to be seen by the next frame, whereas a
// stdin line races the charger's socket.
//
// OCPP security profiles 2 and 3 (TLS): `--tls-cert FILE --tls-key FILE`
// (PEM) serve wss:// instead of ws://, TLS 1.2 or newer only. With
// `--tls-client-ca FILE` (PEM) too, every charger must present a client
// certificate issued by that CA or the TLS handshake fails (requestCert +
// rejectUnauthorized: profile 3). `--tls-max-version TLSv1.2` caps the
// version. `--password-file FILE` makes HTTP Basic auth mandatory: the
// password (FILE's bytes, exactly) must come with the charger's identity as
// the user name, or the upgrade is refused with 401 (profiles 1 and 2).
// Without these options the server is plain ws:// and checks no password, as
// before.

const crypto = require('crypto');
const fs = require('fs');
const http = require('http');
const https = require('https');
const readline = require('readline');
const {
    RPCServer, NOREPLY, TimeoutError, createRPCError, createValidator,
} = require('ocpp-rpc');
const SCHEMAS = {
    'ocpp1.6': require('ocpp-rpc/lib/schemas/ocpp1_6.json'),
    'ocpp2.0.1': require('ocpp-rpc/lib/schemas/ocpp2_0_1.json'),
};
const OCPP_RPC_VERSION = require('ocpp-rpc/package.json').version;

function option(name) {
    const i = process.argv.indexOf(name);
    return i >= 0 ? process.argv[i + 1] : null;
}

const PROTOCOLS = (option('--protocols') ?? 'ocpp1.6').split(',');
const TLS_CERT = option('--tls-cert');
const TLS_KEY = option('--tls-key');
const TLS_CLIENT_CA = option('--tls-client-ca');
const TLS_MAX_VERSION = option('--tls-max-version');   // e.g. TLSv1.2; default: Node's newest
const PASSWORD_FILE = option('--password-file');
if ((TLS_CERT === null) !== (TLS_KEY === null) || (TLS_CLIENT_CA !== null && TLS_CERT === null)) {
    process.stderr.write('--tls-cert and --tls-key go together; --tls-client-ca needs both\n');
    process.exit(2);
}
// Read once at startup: a Buffer, so binary AuthorizationKeys compare exactly.
const PASSWORD = PASSWORD_FILE !== null ? fs.readFileSync(PASSWORD_FILE) : null;

// ---------------------------------------------------------------------------
// Validation
//
// ocpp-rpc 2.2.1 checks "format": "date-time" with ajv-formats 2.1.1, whose
// time-zone test is broken (a missing zone yields `undefined`, compared with
// `!== ""`), and which also takes a space for the 'T'. Stock strict mode
// therefore accepts "2026-11-23 10:00:00" and "2026-11-23T10:00:00" -- exactly
// the local-time bugs a charger is likely to have. So the stock validator runs
// first, unchanged, and then every date-time field must also be an RFC 3339
// date-time: 'T' separator, seconds, and 'Z' or a "+hh:mm" offset.

const RFC3339 = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.\d+)?(?:Z|[+-](\d{2}):(\d{2}))$/i;

function isRfc3339DateTime(s) {
    const m = RFC3339.exec(s);
    if (!m) return false;
    const [year, month, day, hour, minute, second] = m.slice(1, 7).map(Number);
    const daysInMonth = new Date(Date.UTC(year, month, 0)).getUTCDate();
    if (month < 1 || month > 12 || day < 1 || day > daysInMonth) return false;
    if (hour > 23 || minute > 59 || second > 60) return false;
    if (m[7] !== undefined && (Number(m[7]) > 23 || Number(m[8]) > 59)) return false;
    return true;
}

function resolveRef(root, schema) {
    // The schemas only use local "#/definitions/X" references.
    if (schema && typeof schema.$ref === 'string' && schema.$ref.startsWith('#/')) {
        return schema.$ref.slice(2).split('/').reduce((node, key) => node?.[key], root);
    }
    return schema;
}

function laxDateTimes(root, schema, data, path, found) {
    schema = resolveRef(root, schema);
    if (!schema || data === null || data === undefined) return found;
    if (schema.format === 'date-time' && typeof data === 'string' && !isRfc3339DateTime(data)) {
        found.push(path);
    }
    if (schema.properties && typeof data === 'object' && !Array.isArray(data)) {
        for (const [key, sub] of Object.entries(schema.properties)) {
            if (key in data) laxDateTimes(root, sub, data[key], `${path}/${key}`, found);
        }
    }
    if (schema.items && Array.isArray(data)) {
        data.forEach((item, i) => laxDateTimes(root, schema.items, item, `${path}/${i}`, found));
    }
    return found;
}

// Duck-typed like ocpp-rpc's Validator; registering one per subprotocol via
// strictModeValidators replaces the stock ones.
function strictValidatorFor(protocol) {
    const stock = createValidator(protocol, SCHEMAS[protocol]);
    const byId = new Map(SCHEMAS[protocol].map(s => [s.$id, s]));
    return {
        subprotocol: protocol,
        validate(schemaId, params) {
            stock.validate(schemaId, params);
            const root = byId.get(schemaId);
            const bad = root ? laxDateTimes(root, root, params, '', []) : [];
            if (bad.length) {
                const errors = bad.map(p => ({
                    instancePath: p,
                    schemaPath: '#/format',
                    keyword: 'format',
                    params: {format: 'date-time'},
                    message: "must be an RFC 3339 date-time ('T' separator and 'Z' or +hh:mm offset)",
                }));
                throw createRPCError(
                    'FormatViolation',
                    errors.map(e => `data${e.instancePath} ${e.message}`).join(', '),
                    {errors, data: params},
                );
            }
            return true;
        },
    };
}
const validators = Object.fromEntries(PROTOCOLS.map(p => [p, strictValidatorFor(p)]));

// ---------------------------------------------------------------------------
// Output

function emit(obj) {
    process.stdout.write(JSON.stringify(obj) + '\n');
}

function errorInfo(err) {
    if (!err) return {};
    return {
        error_code: err.rpcErrorCode ?? null,
        error_message: err.message ?? String(err),
        errors: err.details?.errors ?? null,
    };
}

// ---------------------------------------------------------------------------
// CSMS behaviour (settable from Python)

const settings = {
    boot_status: 'Accepted',
    heartbeat_interval: 300,
    rejected_tags: new Set(),
    parent_id_tags: {},
    respond: true,
};

const settingsFile = option('--settings');

function refreshSettings() {
    if (!settingsFile) return;
    try {
        applySettings(JSON.parse(fs.readFileSync(settingsFile, 'utf8')));
    } catch (err) {
        // The writer replaces the file atomically, so this is a real fault;
        // keep the last good settings rather than fail the charger's call.
        process.stderr.write(`cannot read settings from ${settingsFile}: ${err}\n`);
    }
}

function applySettings(options) {
    for (const [key, value] of Object.entries(options || {})) {
        switch (key) {
            case 'boot_status': settings.boot_status = String(value); break;
            case 'heartbeat_interval': settings.heartbeat_interval = Number(value); break;
            case 'rejected_tags': settings.rejected_tags = new Set(value); break;
            case 'parent_id_tags': settings.parent_id_tags = {...value}; break;
            case 'respond': settings.respond = Boolean(value); break;
            default: throw new Error(`unknown setting '${key}'`);
        }
    }
}

const nowUtc = () => new Date().toISOString();

function idTagInfo(idTag) {
    let status = 'Accepted';
    if (settings.rejected_tags.has(idTag)) status = 'Invalid';
    else if (idTag.startsWith('BLOCKED')) status = 'Blocked';
    else if (idTag.startsWith('EXPIRED')) status = 'Expired';
    const info = {status};
    const parent = settings.parent_id_tags[idTag];
    if (parent !== undefined) info.parentIdTag = parent;
    return info;
}

function idTokenInfo(token) {
    const value = token?.idToken ?? '';
    const legacy = idTagInfo(value);
    const info = {status: legacy.status};
    if (legacy.parentIdTag !== undefined) {
        info.groupIdToken = {idToken: legacy.parentIdTag, type: 'Central'};
    }
    return info;
}

let nextTransactionId = 1;

const handlers201 = {
    BootNotification: () => ({
        status: settings.boot_status,
        currentTime: nowUtc(),
        interval: settings.heartbeat_interval,
    }),
    Heartbeat: () => ({currentTime: nowUtc()}),
    Authorize: ({params}) => ({idTokenInfo: idTokenInfo(params.idToken)}),
    TransactionEvent: ({params}) => (
        params.idToken !== undefined ? {idTokenInfo: idTokenInfo(params.idToken)} : {}
    ),
    MeterValues: () => ({}),
    StatusNotification: () => ({}),
    NotifyReport: () => ({}),
    NotifyEvent: () => ({}),
    SecurityEventNotification: () => ({}),
    DataTransfer: () => ({status: 'UnknownVendorId'}),
    FirmwareStatusNotification: () => ({}),
    LogStatusNotification: () => ({}),
};

const handlers16 = {
    BootNotification: () => ({
        status: settings.boot_status,
        currentTime: nowUtc(),
        interval: settings.heartbeat_interval,
    }),
    Heartbeat: () => ({currentTime: nowUtc()}),
    Authorize: ({params}) => ({idTagInfo: idTagInfo(params.idTag)}),
    StartTransaction: ({params}) => ({
        transactionId: nextTransactionId++,
        idTagInfo: idTagInfo(params.idTag),
    }),
    StopTransaction: ({params}) => (
        params.idTag !== undefined ? {idTagInfo: idTagInfo(params.idTag)} : {}
    ),
    MeterValues: () => ({}),
    StatusNotification: () => ({}),
    DataTransfer: () => ({status: 'UnknownVendorId'}),
    DiagnosticsStatusNotification: () => ({}),
    FirmwareStatusNotification: () => ({}),
};

// ---------------------------------------------------------------------------
// Connections

const server = new RPCServer({
    protocols: PROTOCOLS,
    strictMode: true,
    strictModeValidators: Object.values(validators),
});

let nextConnId = 1;
// Errors that strict mode raised for a charger's CALLRESULT (vs. a CallError
// the charger sent), and the wire frame behind each CallError.
const rejectedResponses = new WeakSet();
const callErrorIds = new WeakMap();

const connections = new Map();   // identity -> {conn, client}; latest connection wins

server.auth((accept, reject, handshake) => {
    if (!handshake.identity) {
        reject(404, 'No charge point identity in the URL');
        return;
    }
    if (PASSWORD !== null) {
        // ocpp-rpc gives the password only when the Basic auth user name is
        // the identity; anything else arrives as undefined.
        const given = handshake.password;
        const good = given !== undefined && given.length === PASSWORD.length
            && crypto.timingSafeEqual(given, PASSWORD);
        if (!good) {
            reject(401, given === undefined ? 'Basic auth with the charge point identity required'
                : 'Wrong password');
            return;
        }
    }
    // No subprotocol is accepted and closed in the 'client' handler, as
    // OCPP-J 1.6 section 3.1.2 prescribes, rather than failing the handshake.
    accept();
});

server.on('upgradeAborted', ({error, identity, request}) => {
    emit({
        event: 'upgrade_aborted', identity, path: request?.url ?? null,
        error: error?.message ?? String(error),
    });
});

server.on('client', (client) => {
    const conn = nextConnId++;
    const identity = client.identity;
    const direction = outbound => (outbound ? 'csms->cp' : 'cp->csms');
    // message id -> action of calls awaiting a response, per direction, so
    // results and errors can be labelled with the action they answer.
    const inboundCalls = new Map();
    const outboundCalls = new Map();
    // Error frames as they came off the wire: ocpp-rpc maps unknown error
    // codes to GenericError, and the Python side wants the real code.
    const wireErrors = new Map();

    client.on('message', ({message, outbound}) => {
        let frame;
        try {
            frame = JSON.parse(message.toString());
        } catch {
            return;   // reported by 'badMessage'
        }
        if (!Array.isArray(frame) || ![2, 3, 4].includes(frame[0])) return;
        const [type, uniqueId] = frame;
        const event = {event: 'frame', identity, conn, direction: direction(outbound), unique_id: uniqueId};
        if (type === 2) {
            (outbound ? outboundCalls : inboundCalls).set(uniqueId, frame[2]);
            Object.assign(event, {kind: 'call', action: frame[2] ?? '', payload: frame[3] ?? null});
        } else {
            const pending = outbound ? inboundCalls : outboundCalls;
            const action = pending.get(uniqueId) ?? '';
            const answersOurCall = !outbound && pending.has(uniqueId);
            pending.delete(uniqueId);
            if (type === 3) {
                Object.assign(event, {kind: 'result', action, payload: frame[2] ?? null});
            } else {
                const payload = {
                    errorCode: frame[2] ?? null,
                    errorDescription: frame[3] ?? null,
                    errorDetails: frame[4] ?? null,
                };
                if (answersOurCall) wireErrors.set(uniqueId, payload);
                Object.assign(event, {kind: 'error', action, payload});
            }
        }
        emit(event);
    });

    client.on('strictValidationFailure', (ev) => {
        emit({
            event: 'bad_message',
            source: 'strictValidationFailure',
            identity, conn,
            direction: direction(ev.outbound),
            kind: ev.isCall ? 'call' : 'result',
            action: ev.method,
            unique_id: ev.messageId,
            payload: ev.isCall ? ev.params : ev.result,
            ...errorInfo(ev.error),
        });
        rejectedResponses.add(ev.error);
    });

    client.on('badMessage', ({buffer, error, response}) => {
        emit({
            event: 'bad_message',
            source: 'badMessage',
            identity, conn,
            direction: 'cp->csms',
            kind: null, action: null, unique_id: null,
            raw: buffer.toString(),
            response,
            ...errorInfo(error),
        });
    });

    client.on('callError', ({outbound, messageId, error}) => {
        if (outbound) callErrorIds.set(error, {messageId, wire: wireErrors.get(messageId)});
        wireErrors.delete(messageId);
    });

    client.on('close', ({code, reason}) => {
        if (connections.get(identity)?.client === client) connections.delete(identity);
        emit({event: 'disconnected', identity, conn, code: code ?? null, reason: String(reason ?? '')});
    });

    if (!PROTOCOLS.includes(client.protocol)) {
        emit({
            event: 'bad_message',
            source: 'subprotocol',
            identity, conn,
            direction: 'cp->csms',
            kind: null, action: null, unique_id: null,
            offered: [...client.handshake.protocols],
            error_code: null,
            error_message: `charger offered none of ${PROTOCOLS.join(', ')}`,
            errors: null,
        });
        client.close({code: 1002, reason: `one of ${PROTOCOLS.join(', ')} required`});
        return;
    }

    const handlers = client.protocol === 'ocpp2.0.1' ? handlers201 : handlers16;
    for (const [action, fn] of Object.entries(handlers)) {
        client.handle(action, (call) => {
            refreshSettings();
            return settings.respond ? fn(call) : NOREPLY;
        });
    }

    connections.set(identity, {conn, client});
    emit({
        event: 'connected', identity, conn, protocol: client.protocol,
        endpoint: client.handshake.endpoint, remote: client.handshake.remoteAddress,
        basic_auth: client.handshake.password !== undefined,
        tls: tlsInfo(client.handshake.request.socket),
    });
});

// What the TLS layer agreed with the charger; null on plain ws://.
function tlsInfo(socket) {
    if (!socket || !socket.encrypted) return null;
    const peer = socket.getPeerCertificate();
    const hasPeer = peer && Object.keys(peer).length > 0;
    return {
        protocol: socket.getProtocol(),
        cipher: socket.getCipher()?.name ?? null,
        authorized: socket.authorized,
        client_cert: hasPeer ? {
            subject_cn: peer.subject?.CN ?? null,
            issuer_cn: peer.issuer?.CN ?? null,
            serial: peer.serialNumber ?? null,
        } : null,
    };
}

// ---------------------------------------------------------------------------
// Commands from Python

async function doCall({identity, action, payload, timeout}) {
    const entry = connections.get(identity);
    if (!entry) return {ok: false, error: {type: 'not_connected', message: `no charger '${identity}' is connected`}};
    try {
        // Checked here so that a bad test payload is told apart from a
        // charger's CallError.
        validators[entry.client.protocol].validate(`urn:${action}.req`, payload);
    } catch (err) {
        return {ok: false, error: {type: 'invalid_request', ...errorInfo(err)}};
    }
    const callTimeoutMs = Math.max(1, Math.round((timeout ?? 10) * 1000));
    try {
        const result = await entry.client.call(action, payload, {callTimeoutMs});
        return {ok: true, result};
    } catch (err) {
        const ids = callErrorIds.get(err) ?? {};
        if (err instanceof TimeoutError) {
            return {ok: false, error: {type: 'timeout', message: err.message, unique_id: ids.messageId ?? null}};
        }
        if (rejectedResponses.has(err)) {
            return {ok: false, error: {type: 'invalid_response', unique_id: ids.messageId ?? null, ...errorInfo(err)}};
        }
        if (ids.wire) {
            return {ok: false, error: {type: 'call_error', unique_id: ids.messageId, ...ids.wire}};
        }
        return {ok: false, error: {type: 'disconnected', message: err.message ?? String(err)}};
    }
}

async function doDrop({identity}) {
    const entry = connections.get(identity);
    if (!entry) return {ok: true, dropped: false};
    // force: terminate the TCP socket without a close handshake.
    await entry.client.close({force: true});
    return {ok: true, dropped: true};
}

function doList() {
    return {
        ok: true,
        connections: [...connections.entries()].map(([identity, {conn, client}]) => ({
            identity, conn, protocol: client.protocol,
        })),
    };
}

async function handleCommand(line) {
    let msg;
    try {
        msg = JSON.parse(line);
    } catch (err) {
        process.stderr.write(`ignoring unparsable command: ${line}\n`);
        return;
    }
    let reply;
    try {
        switch (msg.cmd) {
            case 'set':
                if (settingsFile) throw new Error(`settings come from ${settingsFile}`);
                applySettings(msg.options);
                reply = {ok: true};
                break;
            case 'call': reply = await doCall(msg); break;
            case 'drop': reply = await doDrop(msg); break;
            case 'list': reply = doList(); break;
            default: reply = {ok: false, error: {type: 'bad_command', message: `unknown cmd '${msg.cmd}'`}};
        }
    } catch (err) {
        reply = {ok: false, error: {type: 'internal', message: err.stack ?? String(err)}};
    }
    if (msg.id !== undefined && msg.id !== null) emit({id: msg.id, ...reply});
}

// ---------------------------------------------------------------------------
// Startup

process.on('unhandledRejection', err => process.stderr.write(`unhandled rejection: ${err?.stack ?? err}\n`));
process.stdout.on('error', () => process.exit(0));   // Python went away

function createServer() {
    const notFound = (req, res) => {
        res.statusCode = 404;
        res.end();
    };
    if (TLS_CERT === null) return http.createServer({noDelay: true}, notFound);
    const options = {
        noDelay: true,
        cert: fs.readFileSync(TLS_CERT),
        key: fs.readFileSync(TLS_KEY),
        minVersion: 'TLSv1.2',
    };
    if (TLS_MAX_VERSION !== null) options.maxVersion = TLS_MAX_VERSION;
    if (TLS_CLIENT_CA !== null) {
        Object.assign(options, {
            ca: fs.readFileSync(TLS_CLIENT_CA),
            requestCert: true,
            rejectUnauthorized: true,   // no certificate, or one of another CA: no TLS
        });
    }
    const server = https.createServer(options, notFound);
    server.on('tlsClientError', (error, socket) => {
        // A client certificate that fails verification makes Node destroy the
        // socket without an alert; the error is then a bare "socket hang up" and
        // only authorizationError says why.
        emit({
            event: 'tls_refused', remote: socket?.remoteAddress ?? null,
            error: error?.message ?? String(error), code: error?.code ?? null,
            authorization_error: socket?.authorizationError ?? null,
        });
    });
    return server;
}

async function main() {
    const httpServer = createServer();
    httpServer.on('upgrade', (request, socket, head) => {
        // ocpp-rpc would throw an unhandled URIError on a malformed escape.
        try {
            const path = new URL('http://localhost' + (request.url || '/')).pathname;
            decodeURIComponent(path.split('/').pop());
        } catch {
            socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n');
            return;
        }
        server.handleUpgrade(request, socket, head);
    });
    await new Promise((resolve, reject) => {
        httpServer.once('error', reject);
        httpServer.listen(0, '127.0.0.1', resolve);
    });
    emit({
        event: 'listening', port: httpServer.address().port, ocpp_rpc: OCPP_RPC_VERSION,
        tls: TLS_CERT !== null, client_certificates: TLS_CLIENT_CA !== null,
        password: PASSWORD !== null,
    });

    const rl = readline.createInterface({input: process.stdin, crlfDelay: Infinity});
    rl.on('line', line => { if (line.trim()) handleCommand(line); });
    rl.on('close', () => process.exit(0));
}

main().catch((err) => {
    process.stderr.write(`startup failed: ${err?.stack ?? err}\n`);
    process.exit(1);
});
