// Shared by init-replicaset.js, init-collections.js and rotate-certificates.js
// (mongosh --nodb):
// connect to mongod over TLS as the root user, presenting NVS_TLS_PEM.
// Environment: NVS_HOST (host:port), NVS_TLS_CA, NVS_TLS_PEM, NVS_ROOT_USER,
// NVS_ROOT_PASSWORD_FILE, NVS_TLS_ALLOW_INVALID_HOSTNAMES ("true" for
// connections to 127.0.0.1 inside the pod).
const fs = require('fs');

function nvsEnv(name) {
  const value = process.env[name];
  if (value === undefined || value === '') {
    throw new Error(`environment variable ${name} is not set`);
  }
  return value;
}

// A command's reply, or an Error with the server's code and codeName (mongosh
// throws those itself; an older shell returns ok: 0).
function nvsChecked(command, result) {
  if (result.ok !== 1) {
    const error = new Error(`${Object.keys(command)[0]} failed: ${result.errmsg}`);
    error.code = result.code;
    error.codeName = result.codeName;
    throw error;
  }
  return result;
}

// A command on the admin database.
function nvsCommand(db, command) {
  return nvsChecked(command, db.adminCommand(command));
}

// A command on db itself.
function nvsRunCommand(db, command) {
  return nvsChecked(command, db.runCommand(command));
}

function nvsConnect(attempts) {
  const host = nvsEnv('NVS_HOST');
  const password = fs.readFileSync(nvsEnv('NVS_ROOT_PASSWORD_FILE'), 'utf8').trim();
  const options = [
    'tls=true',
    `tlsCAFile=${encodeURIComponent(nvsEnv('NVS_TLS_CA'))}`,
    `tlsCertificateKeyFile=${encodeURIComponent(nvsEnv('NVS_TLS_PEM'))}`,
    'directConnection=true',
    'authSource=admin',
    'serverSelectionTimeoutMS=5000',
  ];
  if (process.env.NVS_TLS_ALLOW_INVALID_HOSTNAMES === 'true') {
    options.push('tlsAllowInvalidHostnames=true');
  }
  const user = encodeURIComponent(nvsEnv('NVS_ROOT_USER'));
  const uri = `mongodb://${user}:${encodeURIComponent(password)}@${host}/admin?${options.join('&')}`;
  for (let attempt = 1; ; attempt++) {
    try {
      const db = connect(uri);
      nvsCommand(db, { ping: 1 });
      return db;
    } catch (error) {
      if (attempt >= attempts) {
        throw error;
      }
      print(`waiting for mongod at ${host} (attempt ${attempt}/${attempts}): ${error.message}`);
      sleep(5000);
    }
  }
}
