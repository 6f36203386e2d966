// Run by tls-pem.sh in the rotator sidecar after it rebuilt server.pem:
// mongod re-reads its certificate, key and CA file (MongoDB 5.0+).
load(`${process.env.NVS_SCRIPTS_DIR}/connect.js`);

const admin = nvsConnect(1);
nvsCommand(admin, {
  rotateCertificates: 1,
  message: 'nvsentinel: server certificate Secret changed',
});
print('rotateCertificates ok');
