// Verifies the DKIM signatures of the message in argv[2] against the DNS server in argv[3]
// (host:port), with mailauth, an implementation independent of the gateway's (dkimpy).
// Prints one JSON object: {"results": [{"domain", "selector", "algorithm", "result", "comment"}]}.
'use strict';

const fs = require('fs');
const dns = require('dns');
const { dkimVerify } = require('mailauth/lib/dkim/verify');

async function main() {
    const [file, server] = process.argv.slice(2);
    const resolver = new dns.promises.Resolver({ timeout: 2000, tries: 1 });
    resolver.setServers([server]);
    const result = await dkimVerify(fs.readFileSync(file), {
        resolver: (name, rrtype) => resolver.resolve(name, rrtype)
    });
    const results = result.results.map(r => ({
        domain: r.signingDomain,
        selector: r.selector,
        algorithm: r.algo,
        result: r.status.result,
        comment: r.status.comment || ''
    }));
    process.stdout.write(JSON.stringify({ results }) + '\n');
}

main().catch(err => {
    process.stderr.write(String(err && err.stack || err) + '\n');
    process.exit(1);
});
