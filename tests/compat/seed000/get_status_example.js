// Seed 000's /api/get JavaScript example, verbatim (lines as in the seed's text).
// The test replaces only the base URL, the key and the example's ids.
async function checkImageStatus(imageId) {
const response = await fetch(
`https://image.nalitek.com/api/get/${imageId}`,
{
headers: {
'X-API-Key': 'your_api_key'
}
}
);
const status = await response.json();
console.log(`Status: ${status.status}`);
if (status.status === 'completed') {
console.log(`Image URL: ${status.url}`);
return status.url;
} else if (status.status === 'failed') {
throw new Error(status.message);
}
// Повторить через 2 секунды
await new Promise(resolve => setTimeout(resolve, 2000));
return checkImageStatus(imageId);
}
