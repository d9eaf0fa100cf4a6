<#
.SYNOPSIS
    Installs Guardian as a Windows service wrapped by NSSM.

.DESCRIPTION
    Checks the prerequisites (elevation, Python with Guardian installed, nssm.exe, a valid
    config), then runs `guardian install-service`, which issues the nssm commands:
    install, AppParameters, AppDirectory, DisplayName, Description, Start
    SERVICE_AUTO_START, AppStdout/AppStderr, AppRotateFiles 1, AppRotateOnline 1,
    AppRotateBytes 10485760, AppExit Default Restart, AppRestartDelay 5000,
    AppStopMethodConsole 15000, AppEnvironmentExtra and (optionally) ObjectName.
    Keeping the nssm settings in one place (guardian.install) means this script and
    `guardian install-service` can never disagree. Use -PrintOnly to see the exact
    commands without changing anything.

.PARAMETER Config
    Guardian's TOML config. Required: a service needs a fixed config path.
.PARAMETER Name
    Service name (default: Guardian).
.PARAMETER Python
    python.exe that has Guardian installed, e.g. C:\Guardian\venv\Scripts\python.exe.
    Default: python.exe found on PATH.
.PARAMETER Nssm
    Path to nssm.exe. Default: nssm.exe found on PATH.
.PARAMETER ObjectName
    Account to run the service as. Default: LocalSystem, which can start and stop the
    services Guardian watches. Another account needs those rights granted. A normal
    account (.\user, DOMAIN\user) needs its password: it is asked for here, hidden,
    before anything is installed (built-in accounts, NT SERVICE\<name> and gMSAs
    ending in $ need none).
.PARAMETER Environment
    Extra KEY=VALUE pairs for the service's environment.
.PARAMETER PrintOnly
    Print the nssm commands; install nothing.
.PARAMETER NoStart
    Install but do not start the service.

.NOTES
    A script downloaded from the web is blocked on a default Windows client
    (ExecutionPolicy Restricted, "Mark of the Web"). Either unblock it once:
        Unblock-File .\install-guardian.ps1
        Set-ExecutionPolicy -Scope CurrentUser RemoteSigned
    or run it for this one call only:
        powershell -ExecutionPolicy Bypass -File .\install-guardian.ps1 -Config ...

.EXAMPLE
    .\install-guardian.ps1 -Config C:\Guardian\guardian.toml `
        -Python C:\Guardian\venv\Scripts\python.exe -Nssm C:\Tools\nssm.exe
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory = $true)] [string] $Config,
    [string] $Name = 'Guardian',
    [string] $Python = '',
    [string] $Nssm = '',
    [string] $ObjectName = '',
    [string[]] $Environment = @(),
    [switch] $PrintOnly,
    [switch] $NoStart
)

# Not 'Stop': in Windows PowerShell 5.1 any stderr line of a native program (nssm.exe
# prints "Can't open service!" there) becomes a terminating NativeCommandError under
# 'Stop'. Every native call below checks $LASTEXITCODE instead.
$ErrorActionPreference = 'Continue'
Set-StrictMode -Version Latest

function Fail([string] $Message, [int] $Code = 1) {
    Write-Host "install-guardian: $Message" -ForegroundColor Red
    exit $Code
}

function Test-Administrator {
    $identity = [Security.Principal.WindowsIdentity]::GetCurrent()
    $principal = New-Object Security.Principal.WindowsPrincipal($identity)
    return $principal.IsInRole([Security.Principal.WindowsBuiltInRole]::Administrator)
}

if (-not $PrintOnly -and -not (Test-Administrator)) {
    Fail 'run this from an elevated PowerShell (Run as administrator)'
}

if (-not (Test-Path -LiteralPath $Config -PathType Leaf)) {
    Fail "config file not found: $Config"
}
$Config = (Resolve-Path -LiteralPath $Config).Path

if (-not $Python) {
    $found = Get-Command python.exe -ErrorAction SilentlyContinue
    if (-not $found) { Fail 'python.exe not found on PATH; pass -Python' }
    $Python = $found.Source
}
if (-not (Test-Path -LiteralPath $Python -PathType Leaf)) {
    Fail "python not found: $Python"
}

if (-not $Nssm) {
    $found = Get-Command nssm.exe -ErrorAction SilentlyContinue
    if ($found) {
        $Nssm = $found.Source
    } elseif (-not $PrintOnly) {
        Fail 'nssm.exe not found on PATH; get it from https://nssm.cc or pass -Nssm'
    }
}

$Password = ''
$builtin = '^(LocalSystem|\.\\LocalSystem|NT AUTHORITY\\(System|LocalService|NetworkService)|NT SERVICE\\.+|.+\$)$'
if ($ObjectName -and -not $PrintOnly -and $ObjectName -notmatch $builtin) {
    # Asked now, before nssm touches anything: a service whose account cannot log on
    # fails only when it starts, with error 1069.
    $secure = Read-Host -AsSecureString "Password of $ObjectName"
    $Password = [Runtime.InteropServices.Marshal]::PtrToStringBSTR(
        [Runtime.InteropServices.Marshal]::SecureStringToBSTR($secure))
    if (-not $Password) { Fail "the account $ObjectName needs its password to run a service" 2 }
}

& $Python -m guardian config validate $Config
if ($LASTEXITCODE -ne 0) { Fail 'the config is not valid (see above)' 2 }

$guardianArgs = @('-m', 'guardian', 'install-service', '--config', $Config, '--name', $Name, '--python', $Python)
if ($Nssm) { $guardianArgs += @('--nssm', $Nssm) }
if ($ObjectName) { $guardianArgs += @('--object-name', $ObjectName) }
# Through the environment, not the command line other users can list.
if ($Password) { $env:GUARDIAN_OBJECT_PASSWORD = $Password }
foreach ($pair in $Environment) { $guardianArgs += @('--env', $pair) }
if ($PrintOnly) { $guardianArgs += '--print' }

& $Python @guardianArgs
$installed = $LASTEXITCODE
Remove-Item Env:GUARDIAN_OBJECT_PASSWORD -ErrorAction SilentlyContinue
if ($installed -ne 0) { Fail "guardian install-service failed (exit $installed)" $installed }
if ($PrintOnly -or $NoStart) { exit 0 }

& $Nssm start $Name
if ($LASTEXITCODE -ne 0) { Fail "the service was installed but did not start; see: $Nssm status $Name" }

Start-Sleep -Seconds 3
$service = Get-Service -Name $Name -ErrorAction SilentlyContinue
if (-not $service -or $service.Status -ne 'Running') {
    Fail "service $Name is not running; check the log under the config's log_dir"
}
Write-Host "Guardian is running as service '$Name'." -ForegroundColor Green
Write-Host "  status:    sc.exe queryex $Name"
Write-Host "  restart:   & '$Nssm' restart $Name"
Write-Host "  uninstall: & '$Python' -m guardian uninstall-service --name $Name"
